//! Table-driven tests of the status computation: Job and pod states → phase, conditions, counts.

use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use pomona_crds::contract::cost::CostRates;
use pomona_crds::contract::{PodSummary, Step};
use pomona_crds::{
    Cost, CostEstimate, FeatureExtractionSpec, FeatureExtractionStatus, PcaResult, Phase, Progress,
};
use pomona_operator::observe::{PodObservation, PodPhase, Requests};
use pomona_operator::status::{Observed, PlanState, PlanTotals, changed, compute};
use pomona_operator::validate::Invalid;

const PLAN: PlanTotals = PlanTotals {
    images: 1260,
    bytes: 0,
    shards: 3,
    images_per_shard: 500,
};

fn spec() -> FeatureExtractionSpec {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/examples/fruits-360.yaml"
    );
    let fx: pomona_crds::FeatureExtraction =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    fx.spec
}

fn at(s: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + s).unwrap())
}

fn job(cond: Option<(&str, &str)>, completed: &str, failed: &str, active: i32) -> JobStatus {
    JobStatus {
        conditions: cond.map(|(t, r)| {
            vec![JobCondition {
                type_: t.into(),
                status: "True".into(),
                reason: Some(r.into()),
                ..JobCondition::default()
            }]
        }),
        completed_indexes: Some(completed.into()),
        failed_indexes: (!failed.is_empty()).then(|| failed.into()),
        active: Some(active),
        ..JobStatus::default()
    }
}

fn pod(index: u32, phase: PodPhase, processed: u64, failed: u64, t: i64) -> PodObservation {
    let done = matches!(phase, PodPhase::Succeeded | PodPhase::Failed);
    PodObservation {
        index: Some(index),
        phase,
        summary: done.then(|| PodSummary {
            shard: Some(index),
            images: PLAN.shard_len(index),
            processed,
            failed,
            seconds: 1.0,
            error: (phase == PodPhase::Failed).then(|| format!("shard {index} broke")),
            ..PodSummary::new(Step::Extract)
        }),
        exit_code: done.then_some(if phase == PodPhase::Failed { 3 } else { 0 }),
        reason: None,
        message: None,
        finished_at: done.then(|| at(t)),
        started_at: None,
        requests: Requests::default(),
    }
}

struct Case {
    name: &'static str,
    suspend: bool,
    max_failed: u32,
    plan: PlanState,
    extract: Option<JobStatus>,
    pods: Vec<PodObservation>,
    merge: Option<JobStatus>,
    fit: Option<JobStatus>,
    project: Option<JobStatus>,
    project_pods: Vec<PodObservation>,
    reduce: Option<JobStatus>,
    phase: Phase,
    images: Option<(u64, u64, u64)>,
    shards: Option<(u32, u32, u32, u32)>,
    message: &'static str,
    /// A planning failure the operator retries.
    retrying: Option<&'static str>,
    /// The PCA the reduce pod reported.
    pca: Option<pomona_crds::PcaResult>,
}

fn base(name: &'static str, phase: Phase) -> Case {
    Case {
        name,
        suspend: false,
        max_failed: 0,
        plan: PlanState::Ready(PLAN),
        extract: None,
        pods: vec![],
        merge: None,
        fit: None,
        project: None,
        project_pods: vec![],
        reduce: None,
        phase,
        images: None,
        shards: None,
        message: "",
        retrying: None,
        pca: None,
    }
}

fn ok3() -> Vec<PodObservation> {
    vec![
        pod(0, PodPhase::Succeeded, 500, 0, 1),
        pod(1, PodPhase::Succeeded, 499, 1, 2),
        pod(2, PodPhase::Succeeded, 260, 0, 3),
    ]
}

fn cases() -> Vec<Case> {
    let complete = || job(Some(("Complete", "CompletionsReached")), "0-2", "", 0);
    vec![
        Case {
            plan: PlanState::NotStarted,
            ..base("nothing yet", Phase::Pending)
        },
        Case {
            plan: PlanState::NotStarted,
            retrying: Some("listing s3://fruits/images/ failed: access denied"),
            message: "planning will be retried: listing s3://fruits/images/ failed",
            ..base("planning retried", Phase::Planning)
        },
        Case {
            images: Some((1260, 0, 0)),
            shards: Some((3, 0, 0, 0)),
            ..base("planned, no Job yet", Phase::Extracting)
        },
        Case {
            extract: Some(job(None, "0", "", 2)),
            pods: vec![
                pod(0, PodPhase::Succeeded, 500, 0, 1),
                pod(1, PodPhase::Running, 0, 0, 0),
                pod(2, PodPhase::Pending, 0, 0, 0),
            ],
            images: Some((1260, 500, 0)),
            shards: Some((3, 1, 0, 2)),
            message: "1 of 3 shards done, 2 running",
            ..base("extracting", Phase::Extracting)
        },
        Case {
            extract: Some(job(None, "0,1", "", 1)),
            pods: vec![
                pod(0, PodPhase::Succeeded, 500, 0, 1),
                pod(1, PodPhase::Failed, 0, 0, 2),
                pod(1, PodPhase::Succeeded, 498, 2, 5),
                pod(1, PodPhase::Succeeded, 497, 3, 4),
            ],
            images: Some((1260, 998, 2)),
            shards: Some((3, 2, 0, 1)),
            ..base(
                "a retried index counts once, its latest success",
                Phase::Extracting,
            )
        },
        Case {
            extract: Some(complete()),
            pods: ok3(),
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            ..base("extract complete", Phase::Reducing)
        },
        Case {
            extract: Some(job(
                Some(("Failed", "MaxFailedIndexesExceeded")),
                "0",
                "1",
                1,
            )),
            pods: vec![
                pod(0, PodPhase::Succeeded, 500, 0, 1),
                pod(1, PodPhase::Failed, 0, 0, 2),
            ],
            images: Some((1260, 500, 500)),
            shards: Some((3, 1, 1, 1)),
            message: "shards 1 failed (MaxFailedIndexesExceeded); shard 1: shard 1 broke",
            ..base("a failed index over maxFailedShards", Phase::Failed)
        },
        Case {
            max_failed: 1,
            extract: Some(job(Some(("Failed", "FailedIndexes")), "0,1", "2", 0)),
            pods: vec![
                pod(0, PodPhase::Succeeded, 500, 0, 1),
                pod(1, PodPhase::Succeeded, 500, 0, 1),
                pod(2, PodPhase::Failed, 0, 0, 2),
            ],
            images: Some((1260, 1000, 260)),
            shards: Some((3, 2, 1, 0)),
            ..base("a failed index within maxFailedShards", Phase::Reducing)
        },
        Case {
            max_failed: 2,
            extract: Some(job(
                Some(("Failed", "MaxFailedIndexesExceeded")),
                "",
                "0-2",
                0,
            )),
            images: Some((1260, 0, 1260)),
            shards: Some((3, 0, 3, 0)),
            ..base("failed indexes over maxFailedShards", Phase::Failed)
        },
        Case {
            suspend: true,
            extract: Some(job(Some(("Suspended", "JobSuspended")), "0", "", 0)),
            pods: vec![pod(0, PodPhase::Succeeded, 500, 0, 1)],
            images: Some((1260, 500, 0)),
            shards: Some((3, 1, 0, 0)),
            ..base("suspended", Phase::Suspended)
        },
        Case {
            suspend: true,
            plan: PlanState::NotStarted,
            ..base("suspended early", Phase::Suspended)
        },
        Case {
            extract: Some(complete()),
            pods: ok3(),
            reduce: Some(job(None, "", "", 1)),
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            ..base("reducing", Phase::Reducing)
        },
        Case {
            extract: Some(complete()),
            pods: ok3(),
            reduce: Some(job(Some(("Complete", "CompletionsReached")), "", "", 0)),
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            pca: Some(pomona_crds::PcaResult {
                components: 50,
                explained_variance: 0.85,
                reused: false,
            }),
            ..base("reduce succeeded", Phase::Succeeded)
        },
        Case {
            extract: Some(complete()),
            pods: ok3(),
            reduce: Some(job(Some(("Complete", "CompletionsReached")), "", "", 0)),
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            message: "the reduce Job completed; reading its pod's summary",
            ..base("reduce complete, its summary lost", Phase::Reducing)
        },
        Case {
            extract: Some(complete()),
            pods: ok3(),
            reduce: Some(job(Some(("Failed", "PodFailurePolicy")), "", "", 0)),
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            message: "reduce failed: the reduce Job failed (PodFailurePolicy)",
            ..base("reduce failed", Phase::Failed)
        },
        // A run with a projection Job (one shard a group here): fit, project, reduce.
        Case {
            extract: Some(complete()),
            pods: ok3(),
            fit: Some(job(None, "", "", 1)),
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            message: "merging the shards' statistics and fitting the PCA",
            ..base("fitting", Phase::Reducing)
        },
        Case {
            extract: Some(complete()),
            pods: ok3(),
            fit: Some(job(Some(("Failed", "PodFailurePolicy")), "", "", 0)),
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            message: "reduce failed: fitting the PCA: the fit Job failed (PodFailurePolicy)",
            ..base("fit failed", Phase::Failed)
        },
        Case {
            extract: Some(complete()),
            pods: ok3(),
            fit: Some(job(Some(("Complete", "CompletionsReached")), "", "", 0)),
            project: Some(job(None, "0", "", 2)),
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            message: "1 of 3 groups of shards projected through the PCA, 2 running",
            ..base("projecting", Phase::Reducing)
        },
        Case {
            suspend: true,
            extract: Some(complete()),
            pods: ok3(),
            fit: Some(job(Some(("Complete", "CompletionsReached")), "", "", 0)),
            project: Some(job(None, "0", "", 0)),
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            ..base("projection suspended", Phase::Suspended)
        },
        Case {
            extract: Some(complete()),
            pods: ok3(),
            fit: Some(job(Some(("Complete", "CompletionsReached")), "", "", 0)),
            project: Some(job(Some(("Failed", "FailedIndexes")), "0", "1", 0)),
            project_pods: vec![pod(1, PodPhase::Failed, 0, 0, 9)],
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            message: "reduce failed: projecting group 1 (shards 1 to 1): ",
            ..base("projection failed", Phase::Failed)
        },
        Case {
            extract: Some(complete()),
            pods: ok3(),
            fit: Some(job(Some(("Complete", "CompletionsReached")), "", "", 0)),
            project: Some(job(Some(("Complete", "CompletionsReached")), "0-2", "", 0)),
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            message: "every shard is projected; the reduce pod writes the report",
            ..base("projected", Phase::Reducing)
        },
        Case {
            extract: Some(complete()),
            pods: ok3(),
            fit: Some(job(Some(("Complete", "CompletionsReached")), "", "", 0)),
            project: Some(job(Some(("Complete", "CompletionsReached")), "0-2", "", 0)),
            reduce: Some(job(None, "", "", 1)),
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            message: "reading the projected shards and writing the report",
            ..base("reducing after the projection", Phase::Reducing)
        },
        // A run with a merge Job too (one shard a block here, by the spec of the test).
        Case {
            extract: Some(complete()),
            pods: ok3(),
            merge: Some(job(None, "0-1", "", 1)),
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            message: "2 of 3 blocks of statistics merged, 1 running",
            ..base("merging", Phase::Reducing)
        },
        Case {
            extract: Some(complete()),
            pods: ok3(),
            merge: Some(job(Some(("Complete", "CompletionsReached")), "0-2", "", 0)),
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            message: "the statistics are merged in 3 blocks; the PCA is fitted next",
            ..base("merged", Phase::Reducing)
        },
        Case {
            extract: Some(complete()),
            pods: ok3(),
            merge: Some(job(Some(("Failed", "FailedIndexes")), "0-1", "2", 0)),
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            message: "reduce failed: merging the statistics of block 2 (shards 2 to 2) \
                      (FailedIndexes)",
            ..base("merge failed", Phase::Failed)
        },
        Case {
            extract: Some(complete()),
            pods: ok3(),
            merge: Some(job(Some(("Complete", "CompletionsReached")), "0-2", "", 0)),
            fit: Some(job(None, "", "", 1)),
            images: Some((1260, 1259, 1)),
            shards: Some((3, 3, 0, 0)),
            message: "merging the merge Job's blocks and fitting the PCA",
            ..base("fitting from the blocks", Phase::Reducing)
        },
    ]
}

fn observe(c: &Case, spec: &FeatureExtractionSpec) -> FeatureExtractionStatus {
    let obs = Observed {
        generation: Some(2),
        spec,
        old: None,
        invalid: None,
        plan: c.plan,
        extract: c.extract.as_ref(),
        plan_pods: &[],
        extract_pods: &c.pods,
        merge: c.merge.as_ref(),
        merge_pods: &[],
        fit: c.fit.as_ref(),
        fit_pods: &[],
        project: c.project.as_ref(),
        project_pods: &c.project_pods,
        reduce: c.reduce.as_ref(),
        reduce_pods: &[],
        pca: c.pca.as_ref(),
        label_agreement: None,
        retrying: c.retrying,
        rates: None,
    };
    compute(&obs, &at(100))
}

#[test]
fn job_and_pod_states_give_phase_conditions_and_counts() {
    for c in cases() {
        let mut spec = spec();
        spec.suspend = c.suspend;
        spec.sharding.max_failed_shards = c.max_failed;
        spec.sharding.shards_per_projection_pod = 1;
        spec.sharding.shards_per_merge_pod = 1;
        let s = observe(&c, &spec);
        let name = c.name;
        assert_eq!(s.phase, Some(c.phase), "{name}: {s:?}");
        assert_eq!(s.observed_generation, Some(2), "{name}");
        assert_eq!(
            s.images.map(|i| (i.total, i.processed, i.failed)),
            c.images,
            "{name}"
        );
        assert_eq!(
            s.shards.map(|x| (x.total, x.succeeded, x.failed, x.active)),
            c.shards,
            "{name}"
        );
        assert!(
            s.message.as_deref().unwrap().starts_with(c.message),
            "{name}: {:?}",
            s.message
        );
        let cond = |t: &str| {
            s.conditions
                .iter()
                .find(|x| x.type_ == t)
                .unwrap_or_else(|| panic!("{name}: {t}"))
        };
        let truth = |b: bool| if b { "True" } else { "False" };
        assert_eq!(
            cond("Planned").status,
            truth(matches!(c.plan, PlanState::Ready(_))),
            "{name}"
        );
        let progressing = matches!(
            c.phase,
            Phase::Planning | Phase::Extracting | Phase::Reducing
        );
        assert_eq!(cond("Progressing").status, truth(progressing), "{name}");
        assert_eq!(
            cond("Complete").status,
            truth(c.phase == Phase::Succeeded),
            "{name}"
        );
        assert_eq!(
            cond("Failed").status,
            truth(c.phase == Phase::Failed),
            "{name}"
        );
        assert_eq!(
            cond("Suspended").status,
            truth(c.phase == Phase::Suspended),
            "{name}"
        );
        assert_eq!(s.conditions.len(), 5, "{name}");
        assert_eq!(s.start_time.is_some(), c.phase != Phase::Pending, "{name}");
        assert_eq!(s.completion_time.is_some(), c.phase.is_finished(), "{name}");
        assert_eq!(s.outputs.is_some(), c.phase == Phase::Succeeded, "{name}");
    }
}

/// A planned run at generation 1 whose extract Job has `pods`, before any status.
fn extracting<'a>(
    spec: &'a FeatureExtractionSpec,
    extract: &'a JobStatus,
    pods: &'a [PodObservation],
) -> Observed<'a> {
    Observed {
        generation: Some(1),
        spec,
        old: None,
        invalid: None,
        plan: PlanState::Ready(PLAN),
        extract: Some(extract),
        plan_pods: &[],
        extract_pods: pods,
        merge: None,
        merge_pods: &[],
        fit: None,
        fit_pods: &[],
        project: None,
        project_pods: &[],
        reduce: None,
        reduce_pods: &[],
        pca: None,
        label_agreement: None,
        retrying: None,
        rates: None,
    }
}

#[test]
fn unchanged_statuses_keep_their_times_and_are_not_rewritten() {
    let spec = spec();
    let pods = ok3();
    let extract = job(None, "0", "", 2);
    let mut obs = extracting(&spec, &extract, &pods[..1]);
    let first = compute(&obs, &at(0));
    obs.old = Some(&first);
    let again = compute(&obs, &at(50));
    assert!(!changed(Some(&first), &again));
    assert_eq!(
        again.conditions, first.conditions,
        "no transition, same times"
    );
    assert_eq!(again.start_time, Some(at(0)));

    let done = job(Some(("Complete", "CompletionsReached")), "0-2", "", 0);
    let reduced = job(Some(("Complete", "CompletionsReached")), "", "", 0);
    let pca = PcaResult {
        components: 41,
        explained_variance: 0.95,
        reused: false,
    };
    obs.extract = Some(&done);
    obs.extract_pods = &pods;
    obs.reduce = Some(&reduced);
    obs.pca = Some(&pca);
    let last = compute(&obs, &at(90));
    assert!(changed(Some(&first), &last));
    assert_eq!(last.pca.as_ref(), Some(&pca));
    let planned = |s: &FeatureExtractionStatus, t: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
            .last_transition_time
            .clone()
    };
    assert_eq!(planned(&last, "Planned"), at(0), "Planned stayed True");
    assert_eq!(planned(&last, "Complete"), at(90), "Complete turned True");
    assert_eq!(last.completion_time, Some(at(90)));
    assert!(last.outputs.unwrap().csv.unwrap().ends_with("reduced.csv"));

    // Once finished, the status stays (even after the TTL deletes the Jobs).
    let finished = compute(&obs, &at(90));
    obs.old = Some(&finished);
    obs.extract = None;
    obs.reduce = None;
    let later = compute(&obs, &at(5000));
    assert_eq!(later, finished);
    assert!(!changed(Some(&finished), &later));
}

#[test]
fn invalid_resources_fail_with_the_reason_and_messages_stay_bounded() {
    let spec = spec();
    let invalid = Invalid::NoRunnerImage;
    let pods: Vec<PodObservation> = (0..3)
        .map(|i| PodObservation {
            message: Some("x".repeat(100_000)),
            summary: None,
            reason: Some("OOMKilled".into()),
            exit_code: Some(137),
            ..pod(i, PodPhase::Failed, 0, 0, 1)
        })
        .collect();
    let failed = job(Some(("Failed", "MaxFailedIndexesExceeded")), "", "0-2", 0);
    let obs = Observed {
        generation: Some(1),
        spec: &spec,
        old: None,
        invalid: Some(&invalid),
        plan: PlanState::NotStarted,
        extract: None,
        plan_pods: &[],
        extract_pods: &[],
        merge: None,
        merge_pods: &[],
        fit: None,
        fit_pods: &[],
        project: None,
        project_pods: &[],
        reduce: None,
        reduce_pods: &[],
        pca: None,
        label_agreement: None,
        retrying: None,
        rates: None,
    };
    let s = compute(&obs, &at(0));
    assert_eq!(s.phase, Some(Phase::Failed));
    let cond = s.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("True", "NoRunnerImage")
    );
    let s = compute(
        &Observed {
            invalid: None,
            plan: PlanState::Ready(PLAN),
            extract: Some(&failed),
            extract_pods: &pods,
            ..obs
        },
        &at(0),
    );
    let message = s.message.unwrap();
    assert!(
        message.len() <= pomona_operator::status::MAX_MESSAGE,
        "{}",
        message.len()
    );
    assert!(message.contains("exit code 137 (OOMKilled)"), "{message}");
    assert!(serde_json::to_string(&s.conditions).unwrap().len() < 8 * 1024);
}

#[test]
fn counts_survive_pod_garbage_collection_and_reduce_has_the_last_word() {
    let spec = spec();
    let pods = ok3();
    let running = job(None, "0-1", "", 1);
    let mut obs = extracting(&spec, &running, &pods[..2]);
    let two_shards = compute(&obs, &at(10));
    let counted = two_shards.images.unwrap();
    assert_eq!(counted.processed + counted.failed, 1000, "{counted:?}");

    // The first pods are garbage-collected before the run ends: what they reported stays.
    obs.old = Some(&two_shards);
    obs.extract_pods = &pods[2..];
    let after_gc = compute(&obs, &at(20));
    assert_eq!(after_gc.images, two_shards.images);

    // The reduce pod reads the outputs back and reports the run's counts, which win.
    let done = job(Some(("Complete", "CompletionsReached")), "0-2", "", 0);
    let reducing = job(None, "", "", 1);
    let reduce_pod = PodObservation {
        index: None,
        summary: Some(PodSummary {
            images: 1260,
            processed: 1255,
            failed: 5,
            seconds: 2.0,
            ..PodSummary::new(Step::Reduce)
        }),
        ..pod(0, PodPhase::Succeeded, 0, 0, 30)
    };
    obs.extract = Some(&done);
    obs.reduce = Some(&reducing);
    obs.reduce_pods = std::slice::from_ref(&reduce_pod);
    let reduced = compute(&obs, &at(40));
    let images = reduced.images.unwrap();
    assert_eq!(
        (images.total, images.processed, images.failed),
        (1260, 1255, 5)
    );
}

/// `pod` whose summary says `reused` of its processed images were copied from previous runs.
fn reusing(mut pod: PodObservation, reused: u64) -> PodObservation {
    if let Some(s) = pod.summary.as_mut() {
        s.reused = Some(reused);
    }
    pod
}

#[test]
fn images_copied_from_previous_runs_are_counted_apart_among_the_processed() {
    let spec = spec();
    let [a, b, c]: [PodObservation; 3] = ok3().try_into().unwrap();
    let pods = [reusing(a, 480), reusing(b, 10), c];
    let done = job(Some(("Complete", "CompletionsReached")), "0-2", "", 0);
    let s = compute(&extracting(&spec, &done, &pods), &at(10));
    let images = s.images.unwrap();
    assert_eq!((images.processed, images.reused), (1259, 490));
    // A run that copied nothing shows no reused count at all.
    let fresh = compute(&extracting(&spec, &done, &ok3()), &at(10));
    let json = serde_json::to_value(fresh.images.unwrap()).unwrap();
    assert_eq!(json.get("reused"), None, "{json}");
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// `pod` that started at `start` with `cores` and `gib` requested, and that reported `cpu` CPU
/// seconds if it ended.
fn using(pod: PodObservation, start: i64, cores: f64, gib: f64, cpu: f64) -> PodObservation {
    PodObservation {
        started_at: Some(at(start)),
        requests: Requests {
            cpu_cores: cores,
            memory_bytes: gib * GIB,
        },
        summary: pod.summary.clone().map(|s| PodSummary {
            cpu_seconds: Some(cpu),
            ..s
        }),
        ..pod
    }
}

#[test]
fn cost_sums_every_ended_pod_and_prices_it_at_the_rates() {
    let spec = spec();
    let plan_pod = PodObservation {
        index: None,
        summary: Some(PodSummary {
            cpu_seconds: Some(2.0),
            ..PodSummary::new(Step::Plan)
        }),
        ..using(pod(0, PodPhase::Succeeded, 0, 0, -10), -20, 0.5, 0.5, 0.0)
    };
    let pods = [
        using(pod(0, PodPhase::Succeeded, 498, 2, 50), 0, 2.0, 1.0, 90.0),
        using(pod(1, PodPhase::Succeeded, 500, 0, 100), 0, 2.0, 1.0, 180.0),
        // Still running: not counted yet.
        using(pod(2, PodPhase::Running, 0, 0, 0), 50, 2.0, 1.0, 0.0),
    ];
    let extract = job(None, "0-1", "", 1);
    let rates = CostRates {
        per_core_hour: 0.036,
        per_gib_hour: 0.0045,
        currency: "EUR".into(),
    };
    let mut obs = Observed {
        plan_pods: std::slice::from_ref(&plan_pod),
        rates: Some(&rates),
        ..extracting(&spec, &extract, &pods)
    };
    let s = compute(&obs, &at(120));
    // CPU: 2 + 90 + 180 = 272 s. Cores × seconds: 0.5×10 + 2×50 + 2×100 = 305; GiB × seconds:
    // 0.5×10 + 1×50 + 1×100 = 155. 998 images / 272 s × 3600 = 13208.8 per core-hour.
    // 305/3600 × 0.036 + 155/3600 × 0.0045 = 0.00305 + 0.00019375 → 0.0032 EUR.
    assert_eq!(
        s.cost,
        Some(Cost {
            cpu_seconds: 272.0,
            requested_core_seconds: Some(305.0),
            requested_memory_gib_seconds: Some(155.0),
            images_per_core_hour: Some(13208.8),
            pods: 3,
            estimated: Some(CostEstimate {
                amount: 0.0032,
                currency: "EUR".into(),
                per_core_hour: 0.036,
                per_gib_hour: 0.0045,
            }),
        })
    );
    // Without rates: the same figures, no amount.
    let unpriced = compute(&Observed { rates: None, ..obs }, &at(120));
    assert_eq!(unpriced.cost.as_ref().unwrap().estimated, None);
    assert_eq!(unpriced.cost.unwrap().cpu_seconds, 272.0);

    // Pods garbage-collected before the run ends: what they used stays counted.
    obs.old = Some(&s);
    obs.plan_pods = &[];
    obs.extract_pods = &pods[1..];
    assert_eq!(compute(&obs, &at(130)).cost, s.cost);
}

#[test]
fn progress_has_a_rate_and_an_end_while_extracting_and_none_while_suspended() {
    let mut spec = spec();
    let extract = job(None, "0-1", "", 1);
    // The run's first status, before any pod: the Suspended condition False from then on.
    let first = compute(&extracting(&spec, &extract, &[]), &at(-10));
    let pods = [
        using(pod(0, PodPhase::Succeeded, 498, 2, 50), 0, 1.0, 1.0, 1.0),
        using(pod(1, PodPhase::Succeeded, 500, 0, 100), 0, 1.0, 1.0, 1.0),
        using(pod(2, PodPhase::Running, 0, 0, 0), 50, 1.0, 1.0, 0.0),
    ];
    let mut obs = extracting(&spec, &extract, &pods);
    obs.old = Some(&first);
    let s = compute(&obs, &at(120));
    // 1000 images in the 100 s since the first pod started: 10 images/s; the 260 left take
    // 26 s from the last finished shard, at 100 s.
    assert_eq!(
        s.progress,
        Some(Progress {
            images_per_second: Some(10.0),
            estimated_completion_time: Some(at(126).0.to_string()),
            note: None,
        })
    );
    assert_eq!(
        s.progress.as_ref().unwrap().estimated_completion_time,
        Some("2027-01-15T08:02:06Z".into())
    );
    // The same pods give the same estimate at any later reconcile, in this operator or another:
    // nothing in it comes from the operator's memory.
    assert_eq!(compute(&obs, &at(900)).progress, s.progress);

    // Suspended: no rate, no estimate, and the status says why.
    spec.suspend = true;
    let suspended_job = job(Some(("Suspended", "JobSuspended")), "0-1", "", 0);
    let mut obs = extracting(&spec, &suspended_job, &pods[..2]);
    obs.old = Some(&s);
    let suspended = compute(&obs, &at(130));
    assert_eq!(suspended.phase, Some(Phase::Suspended));
    assert_eq!(
        suspended.progress,
        Some(Progress {
            note: Some(pomona_operator::pace::SUSPENDED.into()),
            ..Progress::default()
        })
    );

    // Resumed at 200: the shards finished before do not count, until one finishes after.
    spec.suspend = false;
    let mut obs = extracting(&spec, &extract, &pods[..2]);
    obs.old = Some(&suspended);
    let resumed = compute(&obs, &at(200));
    let progress = resumed.progress.clone().unwrap();
    assert_eq!(
        (
            progress.images_per_second,
            progress.estimated_completion_time
        ),
        (None, None)
    );
    assert!(progress.note.unwrap().starts_with("measuring"));
    let last = using(pod(2, PodPhase::Succeeded, 260, 0, 236), 210, 1.0, 1.0, 1.0);
    let after = [pods[0].clone(), pods[1].clone(), last];
    let mut obs = extracting(&spec, &extract, &after);
    obs.old = Some(&resumed);
    // 260 images in the 36 s since the resume: 7.2 images/s; nothing left.
    assert_eq!(
        compute(&obs, &at(240)).progress,
        Some(Progress {
            images_per_second: Some(7.2),
            estimated_completion_time: Some(at(236).0.to_string()),
            note: None,
        })
    );
}

#[test]
fn the_status_stays_small_however_many_shards_failed() {
    // 100,000 shards, every other one failed for good, within the tolerance: the status names
    // a few and counts them all.
    let mut spec = spec();
    spec.sharding.max_failed_shards = 100_000;
    let every_other = |first: u32| -> String {
        let shards: Vec<String> = (first..100_000).step_by(2).map(|i| i.to_string()).collect();
        shards.join(",")
    };
    let extract = job(
        Some(("Failed", "FailedIndexes")),
        &every_other(1),
        &every_other(0),
        0,
    );
    let plan = PlanTotals {
        images: 200_000_000,
        bytes: 0,
        shards: 100_000,
        images_per_shard: 2_000,
    };
    let obs = Observed {
        plan: PlanState::Ready(plan),
        ..extracting(&spec, &extract, &[])
    };
    let s = compute(&obs, &at(10));
    assert_eq!(s.phase, Some(Phase::Reducing));
    let shards = s.shards.unwrap();
    assert_eq!((shards.succeeded, shards.failed), (50_000, 50_000));
    let message = s.message.clone().unwrap();
    assert!(
        message.contains("shards 0, 2, 4, 6, 8 and 49995 more failed"),
        "{message}"
    );
    let size = serde_json::to_string(&s).unwrap().len();
    assert!(size < 8 * 1024, "{size} bytes of status");
}
