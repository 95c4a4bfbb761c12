//! Config fixtures: every file in tests/config/valid parses; every file in
//! tests/config/invalid fails with the error in its `.err` sibling, and the
//! `warren check` command exits 64 naming the file.

use std::path::{Path, PathBuf};
use std::process::Command;

use warren::config::Config;

fn fixtures(dir: &str, ext: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/config")
        .join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixtures in {}", dir.display());
    v
}

#[test]
fn valid_configs_parse() {
    for f in fixtures("valid", "yaml") {
        Config::load(&f).unwrap_or_else(|e| panic!("{} should be valid: {e}", f.display()));
    }
}

#[test]
fn shipped_example_configs_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for e in std::fs::read_dir(&root).expect("config/ exists") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|e| e == "yaml") {
            Config::load(&p).unwrap_or_else(|e| panic!("{} should be valid: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "expected config/warren.yaml and config/local.yaml");
}

/// The exact message each broken config gets: `FILE` in a `.err` file stands
/// for the config's path. At least 25 mistakes, each named by file, line,
/// column and key (issue 17's table).
#[test]
fn invalid_configs_fail_with_their_error() {
    let files = fixtures("invalid", "yaml");
    assert!(files.len() >= 25, "only {} broken configs", files.len());
    for f in files {
        let expected = std::fs::read_to_string(f.with_extension("err"))
            .unwrap_or_else(|_| panic!("{} needs a .err file", f.display()));
        let expected = expected.trim().replace("FILE", &f.display().to_string());
        match warren::control::reload::load(&f) {
            Ok(_) => panic!("{} should be invalid", f.display()),
            Err(e) => assert_eq!(e.to_string(), expected, "{}", f.display()),
        }
    }
}

/// Configs that run but contradict themselves: a warning each, with its
/// exact text; `warren check` exits 0 and prints it, `--strict` exits 64.
#[test]
fn contradictions_are_warnings_with_their_text() {
    let bin = env!("CARGO_BIN_EXE_warren");
    for f in fixtures("warning", "yaml") {
        let expected = std::fs::read_to_string(f.with_extension("warn"))
            .unwrap_or_else(|_| panic!("{} needs a .warn file", f.display()));
        let expected = expected.trim().replace("FILE", &f.display().to_string());
        let checked = warren::control::reload::load(&f)
            .unwrap_or_else(|e| panic!("{} should be valid: {e}", f.display()));
        let got: Vec<String> = checked.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(got.join("\n"), expected, "{}", f.display());

        let out = Command::new(bin)
            .args(["check", "-c"])
            .arg(&f)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(0), "{}", f.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("warning: {}", got[0])), "{err}");
        let out = Command::new(bin)
            .args(["check", "--strict", "-c"])
            .arg(&f)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(64), "{}", f.display());
    }
    // The valid fixtures have none.
    for f in fixtures("valid", "yaml") {
        let warnings = Config::load(&f).expect("valid").warnings();
        assert!(warnings.is_empty(), "{}: {warnings:?}", f.display());
    }
}

#[test]
fn check_command_exits_64_on_errors_and_prints_effective_config() {
    let bin = env!("CARGO_BIN_EXE_warren");
    let bad = fixtures("invalid", "yaml").remove(0);
    let out = Command::new(bin)
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&bad.display().to_string()), "{err}");

    let good = fixtures("valid", "yaml")
        .into_iter()
        .find(|p| p.ends_with("minimal.yaml"))
        .expect("minimal.yaml");
    let out = Command::new(bin)
        .args(["check", "-c"])
        .arg(&good)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    // Defaults filled in, and the printed config is itself valid.
    for key in [
        "max_connections: 10000",
        "interval: 2s",
        "fall: 3",
        "window: 10s",
        "round-robin",
    ] {
        assert!(text.contains(key), "missing `{key}` in:\n{text}");
    }
    Config::from_yaml(&text, Path::new("effective.yaml")).expect("effective config parses");

    let out = Command::new(bin).arg("--version").output().expect("runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}
