//! `pomona-operator`: reconciles `FeatureExtraction` resources into an Indexed Job of extractor
//! pods and a reduce Job, and reports the run in the resource's status.
//!
//! The operator is built as *read → validate (pure) → build (pure) → apply*. This crate so far
//! holds the pure parts: the operator's settings, the checks a run passes before it starts
//! (data residency among them), the Job builders, the status computation and `render`; the
//! controller loop lands with the operator work (see the README's status table).

pub mod jobs;
pub mod names;
pub mod observe;
pub mod render;
pub mod residency;
pub mod settings;
pub mod status;
pub mod validate;
