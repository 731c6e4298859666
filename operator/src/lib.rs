//! `pomona-operator`: reconciles `FeatureExtraction` resources into an Indexed Job of extractor
//! pods and a reduce Job, and reports the run in the resource's status.
//!
//! The operator is built as *read → validate (pure) → build (pure) → apply*. This crate so far
//! holds the operator's settings and the data-residency check every run passes before it
//! starts; the controller itself lands with the operator work (see the README's status table).

pub mod residency;
