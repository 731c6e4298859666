//! `pomona-operator`: reconciles `FeatureExtraction` resources into a plan Job, an Indexed Job
//! of extractor pods and a reduce Job, and reports the run in the resource's status. It is a
//! pure Kubernetes controller: it reads no Secret and touches no data; every access to storage
//! happens in the run's pods, under the run's own identity.
//!
//! The operator is built as *read → validate (pure) → build (pure) → apply*:
//! - pure: the operator's [`settings`], the checks a run passes before it starts ([`validate`],
//!   data [`residency`] and the admin's [`policy`] among them), the Job builders ([`jobs`], [`names`]), what is read off
//!   pods and Jobs ([`observe`]), the [`status`] computation with the run's [`pace`], the [`lifecycle`] decisions (the
//!   run's TTL, steps never redone, the Job fields that may change), the leader-election
//!   decisions ([`leader`]) and [`render`];
//! - on the cluster: the [`controller`] (reconcile and error policy), [`metrics`] and the HTTP
//!   endpoints ([`serve`]), and the process that ties them together ([`app`]).

pub mod app;
pub mod controller;
pub mod jobs;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod pace;
pub mod planning;
pub mod policy;
pub mod render;
pub mod residency;
pub mod serve;
pub mod settings;
pub mod status;
pub mod validate;
