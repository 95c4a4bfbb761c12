//! A file of a given size that is removed when dropped, for unit tests.

use std::path::PathBuf;

pub(crate) struct TempFile(pub(crate) PathBuf);

impl TempFile {
    pub(crate) fn new(tag: &str, len: usize) -> TempFile {
        let p = std::env::temp_dir().join(format!(
            "warren-config-unit-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&p, "x".repeat(len)).expect("write temp file");
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
