//! Helpers shared by pomona's end-to-end tests (`tests/tests/*.rs`).

pub mod cluster;
pub mod e2e;
pub mod kubelet;

use std::path::{Path, PathBuf};

/// The workspace root (the folder of the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The shared, read-only material beside the repository: `POMONA_SHARED`, else `../shared`.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("POMONA_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("..").join("shared"))
}
