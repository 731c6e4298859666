//! What the benchmarks share: the sample's Training images, copied as often as a run needs.

use std::path::{Path, PathBuf};

use pomona_storage::testing::shared_dir;

/// Every Training image of the shared sample, sorted.
pub fn training_images() -> Vec<PathBuf> {
    let dir = shared_dir().join("data/fruits-360-sample/Training");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (set POMONA_SHARED)", dir.display()))
        .flat_map(|v| std::fs::read_dir(v.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .collect();
    out.sort();
    out
}

/// Writes `copies` copies of every image under `dest/copy-i/<variety>/`; returns how many.
pub fn replicate(images: &[PathBuf], copies: usize, dest: &Path) -> usize {
    for copy in 0..copies {
        for image in images {
            let variety = image.parent().unwrap().file_name().unwrap();
            let dir = dest.join(format!("copy-{copy}")).join(variety);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(image, dir.join(image.file_name().unwrap())).unwrap();
        }
    }
    images.len() * copies
}
