//! Sets `WARREN_GIT_REVISION` for the crate: the short commit hash of the tree
//! being built, with `-dirty` when tracked files differed from it when this script
//! last ran (it reruns when HEAD, the branch or git's index moves, not on every
//! edit of a file). Where there is
//! no git repository (a source tarball, a `cargo package`), the variable of the
//! same name given to the build is used, else "unknown". `warren --version`
//! prints it; the metrics read it with `option_env!`.

use std::path::Path;
use std::process::Command;

const VAR: &str = "WARREN_GIT_REVISION";

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed={VAR}");
    let from_git = Path::new(".git").exists().then(|| {
        // HEAD names the branch; the branch's ref (loose or packed) names the commit;
        // the index changes when files are staged. Rerun when any of them moves.
        let git_dir = git(&["rev-parse", "--git-dir"]).unwrap_or_else(|| ".git".into());
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/index");
        // Only files that exist: cargo reruns the script on every build for a
        // missing one.
        if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
            let loose = git(&["symbolic-ref", "-q", "HEAD"])
                .map(|r| format!("{common}/{r}"))
                .filter(|p| Path::new(p).is_file());
            let packed = format!("{common}/packed-refs");
            for path in loose.into_iter().chain([packed]) {
                if Path::new(&path).is_file() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
        }
        let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
        let dirty = git(&[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
        ])
        .is_some_and(|s| !s.is_empty());
        Some(if dirty { format!("{hash}-dirty") } else { hash })
    });
    let revision = from_git
        .flatten()
        .or_else(|| std::env::var(VAR).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env={VAR}={revision}");
}
