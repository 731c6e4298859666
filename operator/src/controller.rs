//! The controller: reconciles each `FeatureExtraction` as *read → validate (pure) → build (pure)
//! → apply*.
//!
//! One reconcile reads the resource, its Jobs and their pods; while the status holds no plan,
//! runs the plan Job and reads the plan's totals from its pod's summary ([`planning`]); creates
//! or updates the Job the run is at with a server-side apply under one field manager; then
//! computes the status with the pure [`status::compute`] and writes it — once, and only if it
//! changed. A change of phase is also published as a Kubernetes Event. The operator never
//! touches the run's data: listing, reading and writing happen in the pods, under the run's
//! service account.
//!
//! Errors: a spec the run can never satisfy, a policy refusal or a plan that failed for good
//! fail the run (`Failed` with the reason, a Warning Event) and the controller waits for the
//! next change; API errors return `Err`, show in the status, and [`error_policy`] requeues
//! with an exponential backoff per resource.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use pomona_crds::contract::cost::{PodUsage, Usage};
use pomona_crds::contract::{MAX_SHARDS, ShardPlan, shard_plan};
use pomona_crds::{FeatureExtraction, FeatureExtractionSpec, FeatureExtractionStatus, Phase};

use crate::jobs::{
    self, ReduceStepJob, extract_job, failed_shards_config_map, plan_job, reduce_step_job,
};
use crate::leader::Leadership;
use crate::lifecycle::{self, Expiry, MissingSummary};
use crate::metrics::{ErrorCategory, Metrics};
use crate::names::{Component, INSTANCE_LABEL, MANAGED_BY_SELECTOR, bounded, job_name};
use crate::observe::{PodObservation, PodPhase, job_condition, job_indexes};
use crate::planning::{Planning, planning};
use crate::settings::Settings;
use crate::status::{self, Observed, PlanState, PlanTotals};
use crate::validate::validate;

/// The label the Job controller puts on a Job's pods.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// How often a running run is looked at even without a change of its Jobs (a safety net: Job
/// changes trigger reconciles).
pub const RESYNC: Duration = Duration::from_secs(300);
/// Longest a reconcile may take: a few reads, an apply and a status write. The kube client's own
/// timeouts are long enough for its watches (minutes); this bounds every request of a
/// reconcile together, so a server that trickles its answers cannot hold one up.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);
/// First and longest delay before a failed reconcile is retried.
pub const BACKOFF: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(300));

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API request failed.
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// A Job of the run's name exists and belongs to something else.
    #[error("Job {0} exists and is not owned by this FeatureExtraction; waiting for it to go")]
    ForeignJob(String),
    /// The pod watch cache's writer is gone (the operator is shutting down).
    #[error("the pod watch cache is gone")]
    PodCacheGone,
    /// The reconcile did not finish in [`RECONCILE_TIMEOUT`] (an API server that answers too
    /// slowly, or trickles its answer): it is abandoned and retried.
    #[error("the reconcile took longer than {} s and was abandoned", RECONCILE_TIMEOUT.as_secs())]
    Timeout,
    /// Extraction ended with failed shards, and the extract Job that named them was deleted
    /// before the reduce step started.
    #[error(
        "the extract Job was deleted before the reduce step started: the {0} shards that failed \
         cannot be named to it; delete and recreate the FeatureExtraction to rerun"
    )]
    FailedShardsUnknown(u32),
}

impl Error {
    /// The reason of the status condition and Warning Event that report the error.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Api(_) => "KubernetesApiError",
            Error::Timeout => "ReconcileTimedOut",
            Error::PodCacheGone => "PodCacheGone",
            Error::ForeignJob(_) => "ForeignJob",
            Error::FailedShardsUnknown(_) => "FailedShardsUnknown",
        }
    }

    /// Whether the API server refused a write because the resource's namespace is being
    /// deleted: nothing of the run can be written any more, and nothing is lost.
    pub fn namespace_terminating(&self) -> bool {
        matches!(self, Error::Api(e) if namespace_terminating(e))
    }

    /// The metric label of the error.
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::Api(_) | Error::Timeout | Error::PodCacheGone => ErrorCategory::Api,
            Error::ForeignJob(_) | Error::FailedShardsUnknown(_) => ErrorCategory::Spec,
        }
    }
}

/// Whether `e` is the API server's refusal to create anything in a namespace being deleted
/// (403 with the cause `NamespaceTerminating`): not a permission the operator lacks.
pub fn namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.details.as_ref().is_some_and(|d| {
        d.causes.iter().any(|c| c.reason == "NamespaceTerminating")
    }))
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The operator's settings.
    pub settings: Settings,
    /// Publishes Events.
    pub recorder: Recorder,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per resource, for the backoff.
    failures: Mutex<HashMap<ObjectRef<FeatureExtraction>, u32>>,
    /// When each resource last got a Warning Event of each reason, to publish at most one a
    /// minute.
    warned: Mutex<HashMap<(ObjectRef<FeatureExtraction>, &'static str), Instant>>,
    /// Whether this replica leads now; a reconcile does nothing once it does not.
    leadership: Leadership,
    /// The runs' pods, from a label-selected watch cache; `None`: listed from the API server
    /// on each reconcile (the scenario tests).
    pods: Option<Store<Pod>>,
}

/// At most one Warning Event of a reason per resource in this long.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(60);

impl Context {
    /// A context over `client`; `instance` names this replica in Events (its pod name).
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: settings.field_manager.clone(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            failures: Mutex::default(),
            warned: Mutex::default(),
            leadership: Leadership::always(),
            pods: None,
        }
    }

    /// The context of an operator that reads the runs' pods from `pods`, a watch cache of the
    /// pods labelled `app.kubernetes.io/managed-by=pomona-operator`.
    pub fn with_pod_cache(self, pods: Store<Pod>) -> Self {
        Self {
            pods: Some(pods),
            ..self
        }
    }

    /// The context of a replica elected through `leadership`.
    pub fn with_leadership(self, leadership: Leadership) -> Self {
        Self { leadership, ..self }
    }

    /// Whether a Warning of `reason` about `fx` may be published now (and records it).
    fn may_warn(&self, fx: &FeatureExtraction, reason: &'static str) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        let key = (ObjectRef::from_obj(fx), reason);
        let now = Instant::now();
        match warned.get(&key) {
            Some(last) if now.duration_since(*last) < WARNING_INTERVAL => false,
            _ => {
                warned.insert(key, now);
                true
            }
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<FeatureExtraction>, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The delay before retry number `failures` (1-based) of a failed reconcile.
pub fn backoff(failures: u32) -> Duration {
    let (first, max) = BACKOFF;
    first
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(max)
}

/// Reconciles one resource (the controller's reconciler).
pub async fn reconcile(fx: Arc<FeatureExtraction>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leadership.is_leading() {
        // Past the renew deadline (a renewal that did not answer, a paused process): another
        // replica may lead already. Nothing is read or written; the process is about to exit.
        tracing::debug!(fx = %fx.name_any(), "not leading: reconcile skipped");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let started = Instant::now();
    let result = tokio::time::timeout(RECONCILE_TIMEOUT, Run::new(&fx, &ctx).reconcile())
        .await
        .unwrap_or(Err(Error::Timeout));
    ctx.metrics.reconciled(started.elapsed());
    match &result {
        Ok(_) => {
            ctx.failures().remove(&ObjectRef::from_obj(fx.as_ref()));
        }
        Err(e) if e.namespace_terminating() => {
            // The resource goes with its namespace; its deletion is the next change.
            tracing::debug!(fx = %fx.name_any(), error = %e, "the namespace is being deleted");
            ctx.failures().remove(&ObjectRef::from_obj(fx.as_ref()));
            return Ok(Action::await_change());
        }
        Err(e) => {
            ctx.metrics.failed(e.category());
            tracing::warn!(
                fx = %fx.name_any(),
                namespace = fx.namespace().unwrap_or_default(),
                error = %e,
                "reconcile failed"
            );
        }
    }
    result
}

/// The controller's error policy: requeue with an exponential backoff per resource.
pub fn error_policy(fx: Arc<FeatureExtraction>, _error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures();
    let n = failures
        .entry(ObjectRef::from_obj(fx.as_ref()))
        .or_default();
    *n = n.saturating_add(1);
    Action::requeue(backoff(*n))
}

/// One reconcile of one resource.
struct Run<'a> {
    fx: &'a FeatureExtraction,
    ctx: &'a Context,
    name: String,
    jobs: Api<Job>,
    config_maps: Api<ConfigMap>,
}

/// What one reconcile observed of a run's Jobs.
#[derive(Default)]
struct Jobs {
    plan: Option<Job>,
    extract: Option<Job>,
    merge: Option<Job>,
    fit: Option<Job>,
    project: Option<Job>,
    reduce: Option<Job>,
    plan_pods: Vec<PodObservation>,
    extract_pods: Vec<PodObservation>,
    merge_pods: Vec<PodObservation>,
    fit_pods: Vec<PodObservation>,
    project_pods: Vec<PodObservation>,
    reduce_pods: Vec<PodObservation>,
}

impl Jobs {
    /// The Job of `component`, and its pods.
    fn of(&mut self, component: Component) -> (&mut Option<Job>, &mut Vec<PodObservation>) {
        match component {
            Component::Plan => (&mut self.plan, &mut self.plan_pods),
            Component::Extract => (&mut self.extract, &mut self.extract_pods),
            Component::Merge => (&mut self.merge, &mut self.merge_pods),
            Component::Fit => (&mut self.fit, &mut self.fit_pods),
            Component::Project => (&mut self.project, &mut self.project_pods),
            Component::Reduce => (&mut self.reduce, &mut self.reduce_pods),
        }
    }

    /// What the run's pods used before the reduce pod: plan, extract, merge, fit and
    /// projection.
    fn usage_before_reduce(&self) -> Usage {
        let pods: Vec<PodUsage> = [
            &self.plan_pods,
            &self.extract_pods,
            &self.merge_pods,
            &self.fit_pods,
            &self.project_pods,
        ]
        .into_iter()
        .flatten()
        .filter_map(PodObservation::usage)
        .collect();
        Usage::of(&pods)
    }
}

/// What a reconcile does about the plan Job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PlanAction {
    /// Nothing (no plan needed, or the Job runs).
    Keep,
    /// Create it, or bring it in line with the spec (suspend).
    Apply,
    /// Remove it, so that the next reconcile runs it again.
    Rerun,
}

impl<'a> Run<'a> {
    fn new(fx: &'a FeatureExtraction, ctx: &'a Context) -> Self {
        let namespace = fx.namespace().unwrap_or_default();
        Self {
            fx,
            ctx,
            name: fx.name_any(),
            jobs: Api::namespaced(ctx.client.clone(), &namespace),
            config_maps: Api::namespaced(ctx.client.clone(), &namespace),
        }
    }

    fn spec(&self) -> &FeatureExtractionSpec {
        &self.fx.spec
    }

    async fn reconcile(&self) -> Result<Action, Error> {
        if self.fx.metadata.deletion_timestamp.is_some() {
            // The Jobs go with the resource: they carry its controller ownerReference.
            return Ok(Action::await_change());
        }
        let stored = self.fx.status.as_ref();
        let now = Time(Timestamp::now());
        // A run that failed before it was planned ran nothing. One the operator refused (its
        // settings or the admin's policy) is looked at again on every reconcile, so a restart
        // with other settings lets it start; one whose plan failed (an empty source, access
        // denied) only after the resource changed: the plan Job runs again then, and never
        // because its old Job went away. Its status is recomputed as if unfinished.
        let edited = self.edited();
        let reopened = stored
            .filter(|s| failed_before_planning(s))
            .filter(|s| edited || refused_by_settings(s))
            .map(|s| FeatureExtractionStatus {
                phase: None,
                ..s.clone()
            });
        let old = reopened.as_ref().or(stored);
        if old.and_then(|s| s.phase).is_some_and(Phase::is_finished) {
            // A finished run is never restarted; only observedGeneration follows the spec, and
            // its Jobs go once its TTL has passed.
            let new = FeatureExtractionStatus {
                observed_generation: self.fx.metadata.generation,
                ..old.cloned().unwrap_or_default()
            };
            self.write_status(stored, &new).await?;
            let ttl = self.spec().ttl_seconds_after_finished;
            return Ok(
                match lifecycle::expiry(ttl, new.completion_time.as_ref(), Timestamp::now()) {
                    Expiry::Never => Action::await_change(),
                    Expiry::In(left) => Action::requeue(left),
                    Expiry::Now => {
                        self.remove_jobs(ttl.unwrap_or_default()).await?;
                        Action::await_change()
                    }
                },
            );
        }

        // Validate, observe the Jobs, and see where the plan is.
        let mut invalid = validate(self.spec(), &self.ctx.settings).err();
        let mut jobs = Jobs::default();
        let observed = if invalid.is_none() {
            self.observe().await.map(|found| jobs = found)
        } else {
            Ok(())
        };
        let mut plan = recorded_plan(self.spec(), old);
        let mut retrying = None;
        let mut plan_action = PlanAction::Keep;
        // How soon to look again for a summary the watch cache has not shown yet.
        let mut look_again: Option<Duration> = None;
        if invalid.is_none() && observed.is_ok() && plan == PlanState::NotStarted {
            match planning(jobs.plan.as_ref(), &jobs.plan_pods, Timestamp::now()) {
                Planning::Absent if self.spec().suspend => {}
                Planning::Absent => {
                    plan = PlanState::Running;
                    plan_action = PlanAction::Apply;
                }
                Planning::Running { retrying: why } => {
                    plan = PlanState::Running;
                    plan_action = PlanAction::Apply;
                    retrying = why;
                }
                Planning::Planned(totals) => plan = PlanState::Ready(totals),
                Planning::Awaiting(left) => {
                    plan = PlanState::Running;
                    look_again = Some(left);
                }
                Planning::Lost => {
                    plan = PlanState::Running;
                    plan_action = PlanAction::Rerun;
                }
                // A plan that failed is tried again when the spec changed since.
                Planning::Failed(_) if reopened.is_some() && edited => {
                    plan = PlanState::Running;
                    plan_action = PlanAction::Rerun;
                }
                Planning::Failed(why) => invalid = Some(why),
            }
        }
        let retry_note = retrying;
        let rates = self.ctx.settings.cost_rates();
        let compute = |jobs: &Jobs| {
            status::compute(
                &Observed {
                    generation: self.fx.metadata.generation,
                    spec: self.spec(),
                    old,
                    invalid: invalid.as_ref(),
                    plan,
                    extract: jobs.extract.as_ref().and_then(|j| j.status.as_ref()),
                    plan_pods: &jobs.plan_pods,
                    extract_pods: &jobs.extract_pods,
                    merge: jobs.merge.as_ref().and_then(|j| j.status.as_ref()),
                    merge_pods: &jobs.merge_pods,
                    fit: jobs.fit.as_ref().and_then(|j| j.status.as_ref()),
                    fit_pods: &jobs.fit_pods,
                    project: jobs.project.as_ref().and_then(|j| j.status.as_ref()),
                    project_pods: &jobs.project_pods,
                    reduce: jobs.reduce.as_ref().and_then(|j| j.status.as_ref()),
                    reduce_pods: &jobs.reduce_pods,
                    pca: reduce_summary(&jobs.reduce_pods).and_then(|s| s.pca.as_ref()),
                    label_agreement: reduce_summary(&jobs.reduce_pods)
                        .and_then(|s| s.label_agreement),
                    retrying: retry_note.as_deref(),
                    rates: rates.as_ref(),
                },
                &now,
            )
        };
        let mut new = compute(&jobs);
        let progress = match (observed, plan) {
            (Err(e), _) => Err(e),
            (Ok(()), _) if invalid.is_some() => Ok(false),
            (Ok(()), PlanState::Ready(totals)) => {
                self.act(&new, totals, &mut jobs, &mut look_again).await
            }
            (Ok(()), _) => self.act_on_plan(plan_action, &mut jobs).await,
        };
        match progress {
            Ok(true) => new = compute(&jobs),
            Ok(false) => {}
            Err(e) => {
                // An error that stops progress shows in the status and in a Warning Event (at
                // most one a minute), not only in the log; the reconcile is retried.
                let base = stored.cloned().unwrap_or(new);
                let message = e.to_string();
                let blocked = status::with_error(
                    &base,
                    e.reason(),
                    &message,
                    self.fx.metadata.generation,
                    &now,
                );
                self.write_status(stored, &blocked).await?;
                if self.ctx.may_warn(self.fx, e.reason()) {
                    self.event(EventType::Warning, e.reason(), "Reconcile", &message)
                        .await;
                }
                return Err(e);
            }
        }

        self.write_status(stored, &new).await?;
        if let Some(why) = &retry_note
            && self.ctx.may_warn(self.fx, "PlanningRetrying")
        {
            let note = format!("the plan pod failed and is retried: {why}");
            self.event(EventType::Warning, "PlanningRetrying", "Plan", &note)
                .await;
        }
        Ok(match (new.phase, look_again) {
            (_, Some(soon)) => Action::requeue(soon.min(RESYNC)),
            (Some(Phase::Planning | Phase::Extracting | Phase::Reducing), None) => {
                Action::requeue(RESYNC)
            }
            _ => Action::await_change(),
        })
    }

    /// Whether the spec changed since the status was last written.
    fn edited(&self) -> bool {
        self.fx.status.as_ref().and_then(|s| s.observed_generation) != self.fx.metadata.generation
    }

    /// Creates the plan Job (or brings it in line with the spec), or removes it to run it
    /// again. Returns whether it wrote anything.
    async fn act_on_plan(&self, action: PlanAction, jobs: &mut Jobs) -> Result<bool, Error> {
        match action {
            PlanAction::Keep => Ok(false),
            PlanAction::Apply => {
                let desired = plan_job(self.fx, &self.ctx.settings);
                let applied = self.sync(jobs.plan.as_ref(), &desired).await?;
                let wrote = applied.is_some();
                if applied.is_some() {
                    jobs.plan = applied;
                }
                Ok(wrote)
            }
            PlanAction::Rerun => {
                let name = job_name(&self.name, Component::Plan);
                self.jobs.delete(&name, &DeleteParams::background()).await?;
                jobs.plan = None;
                jobs.plan_pods.clear();
                tracing::info!(fx = %self.name, "plan Job removed to run again");
                Ok(true)
            }
        }
    }

    /// The run's Jobs and their pods.
    async fn observe(&self) -> Result<Jobs, Error> {
        // Every Job, always: the extract Job may be gone (deleted by hand) while the reduce Job
        // runs.
        let mut jobs = Jobs::default();
        let mut names = Vec::new();
        for component in Component::ALL {
            let name = job_name(&self.name, component);
            *jobs.of(component).0 = self.own_job(&name).await?;
            names.push((name, component));
        }
        if Component::ALL.iter().all(|&c| jobs.of(c).0.is_none()) {
            return Ok(jobs);
        }
        for pod in self.pods().await? {
            let job = pod.labels().get(JOB_NAME_LABEL);
            if let Some((_, component)) = names.iter().find(|(name, _)| Some(name) == job) {
                jobs.of(*component).1.push(PodObservation::from_pod(&pod));
            }
        }
        Ok(jobs)
    }

    /// The pods of this run's Jobs: from the watch cache when there is one (no request), else
    /// listed by label.
    async fn pods(&self) -> Result<Vec<Arc<Pod>>, Error> {
        let namespace = self.fx.namespace().unwrap_or_default();
        let instance = bounded(&self.name, 63);
        let Some(cache) = &self.ctx.pods else {
            // The scenario tests: no watch cache.
            let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &namespace);
            let selector = format!("{INSTANCE_LABEL}={instance},{MANAGED_BY_SELECTOR}");
            let list = pods.list(&ListParams::default().labels(&selector)).await?;
            return Ok(list.items.into_iter().map(Arc::new).collect());
        };
        // The first reconciles may run before the watch has listed the pods once.
        if cache.wait_until_ready().await.is_err() {
            return Err(Error::PodCacheGone);
        }
        Ok(cache
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
            .filter(|p| p.labels().get(INSTANCE_LABEL) == Some(&instance))
            .collect())
    }

    /// The Job `name` if it exists and this resource controls it.
    async fn own_job(&self, name: &str) -> Result<Option<Job>, Error> {
        let Some(job) = self.jobs.get_opt(name).await? else {
            return Ok(None);
        };
        let uid = self.fx.metadata.uid.as_deref();
        let ours = job
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid);
        if !ours {
            return Err(Error::ForeignJob(name.to_string()));
        }
        Ok(Some(job))
    }

    /// Creates the Job the run needs next, or brings an existing one in line with the spec
    /// (suspend, parallelism). A step that is over is never created again. Returns whether it
    /// wrote anything.
    /// (`look_again` is set when the reduce pod's summary is awaited.)
    async fn act(
        &self,
        status: &FeatureExtractionStatus,
        plan: PlanTotals,
        jobs: &mut Jobs,
        look_again: &mut Option<Duration>,
    ) -> Result<bool, Error> {
        let settings = &self.ctx.settings;
        let phase = status.phase.unwrap_or(Phase::Pending);
        let extracted = lifecycle::extraction_over(status.shards.as_ref());
        let mut wrote = false;
        if !extracted
            && (matches!(phase, Phase::Extracting | Phase::Suspended) || jobs.extract.is_some())
        {
            let planned = ShardPlan {
                images_per_shard: plan.images_per_shard,
                shards: plan.shards,
            };
            let desired = extract_job(self.fx, planned, settings);
            let per_shard = self.spec().sharding.images_per_shard;
            if jobs.extract.is_none() && planned.raised(per_shard) {
                let note = format!(
                    "spec.sharding.imagesPerShard {per_shard} raised to {}: {} images at \
                     {per_shard} per shard would be more than the {MAX_SHARDS} shards one Job \
                     can run",
                    planned.images_per_shard, plan.images
                );
                self.event(
                    EventType::Normal,
                    "ImagesPerShardRaised",
                    "CreateJob",
                    &note,
                )
                .await;
            }
            let asked = self.spec().sharding.max_failed_shards;
            if jobs.extract.is_none() && asked > plan.shards {
                let note = format!(
                    "spec.sharding.maxFailedShards {asked} is above the run's {} shards: the \
                     extract Job tolerates at most {} failed shards",
                    plan.shards, plan.shards
                );
                self.event(
                    EventType::Normal,
                    "MaxFailedShardsClamped",
                    "CreateJob",
                    &note,
                )
                .await;
            }
            if let Some(applied) = self.sync(jobs.extract.as_ref(), &desired).await? {
                jobs.extract = Some(applied);
                wrote = true;
            }
        }
        let chain = jobs::reduce_step(self.spec(), plan.shards);
        let reduce_step_started = chain
            .iter()
            .any(|step| jobs.of(step.component()).0.is_some());
        if phase == Phase::Reducing || reduce_step_started {
            let reported = reduce_summary(&jobs.reduce_pods).is_some_and(|s| s.pca.is_some());
            let recorded = status.pca.is_some();
            let missing = jobs.reduce.as_ref().and_then(|job| {
                lifecycle::reduce_summary(job, reported, recorded, Timestamp::now())
            });
            match missing {
                Some(MissingSummary::Wait(left)) => {
                    *look_again = Some(left);
                    return Ok(false);
                }
                Some(MissingSummary::Lost) => {
                    let name = job_name(&self.name, Component::Reduce);
                    self.jobs.delete(&name, &DeleteParams::background()).await?;
                    tracing::info!(fx = %self.name, "reduce Job removed to run again");
                    jobs.reduce = None;
                    jobs.reduce_pods.clear();
                    return Ok(true);
                }
                None => {}
            }
            if !reduce_step_started {
                // The failed shards go into the ConfigMap the fit and reduce pods read them
                // from, before the first Job that mounts it.
                let failed = match jobs.extract.as_ref() {
                    Some(job) => job
                        .status
                        .as_ref()
                        .map(|s| job_indexes(s).1)
                        .unwrap_or_default(),
                    None => match status.shards.as_ref().map_or(0, |s| s.failed) {
                        0 => Vec::new(),
                        n => return Err(Error::FailedShardsUnknown(n)),
                    },
                };
                let list = failed_shards_config_map(self.fx, &failed);
                let name = list.metadata.name.clone().unwrap_or_default();
                let params = PatchParams::apply(&settings.field_manager).force();
                self.config_maps
                    .patch(&name, &params, &Patch::Apply(&list))
                    .await?;
            }
            let next = next_reduce_job(&chain, jobs);
            let earlier = jobs.usage_before_reduce();
            let desired = reduce_step_job(self.fx, next, plan, earlier, settings);
            let current = jobs.of(next.component()).0;
            if let Some(applied) = self.sync(current.as_ref(), &desired).await? {
                *current = Some(applied);
                wrote = true;
            }
        }
        Ok(wrote)
    }

    /// Creates `desired` with a server-side apply when `current` is missing. A running Job is
    /// changed only in the fields that may change (suspend, parallelism), by a merge patch: its
    /// pod template is immutable, so a runner edit applies to the next run, which an Event
    /// says. A finished Job is left alone.
    async fn sync(&self, current: Option<&Job>, desired: &Job) -> Result<Option<Job>, Error> {
        let name = desired.metadata.name.clone().unwrap_or_default();
        let params = PatchParams::apply(&self.ctx.settings.field_manager).force();
        let Some(job) = current else {
            let applied = self
                .jobs
                .patch(&name, &params, &Patch::Apply(desired))
                .await?;
            self.job_created(&name, desired).await;
            return Ok(Some(applied));
        };
        let finished = job.status.as_ref().is_some_and(|s| {
            s.conditions
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        });
        if finished {
            return Ok(None);
        }
        if self.edited() && lifecycle::runner_changed(job, desired) {
            let note = format!(
                "spec.runner changed while Job {name} runs: its pods keep their settings, the \
                 change applies to the next run"
            );
            self.event(EventType::Normal, "RunnerChanged", "UpdateJob", &note)
                .await;
        }
        if lifecycle::mutable_fields(job) == lifecycle::mutable_fields(desired) {
            return Ok(None);
        }
        let params = PatchParams {
            field_manager: Some(self.ctx.settings.field_manager.clone()),
            ..PatchParams::default()
        };
        let patch = lifecycle::mutable_patch(desired);
        Ok(Some(
            self.jobs
                .patch(&name, &params, &Patch::Merge(&patch))
                .await?,
        ))
    }

    /// The `JobCreated` Event of a new Job.
    async fn job_created(&self, name: &str, desired: &Job) {
        let spec = desired.spec.as_ref();
        let component = Component::of(desired);
        let what = match spec.and_then(|s| s.completions) {
            Some(n) if spec.and_then(|s| s.completion_mode.as_deref()) == Some("Indexed") => {
                let plural = if n == 1 { "" } else { "s" };
                let unit = match component {
                    Some(Component::Project) => "group",
                    Some(Component::Merge) => "block",
                    _ => "shard",
                };
                format!("created Job {name}: {n} {unit}{plural}")
            }
            _ => format!("created Job {name}"),
        };
        let action = component.map_or("CreateJob", Component::create_action);
        self.event(EventType::Normal, "JobCreated", action, &what)
            .await;
    }

    /// Removes the run's Jobs (and, through the garbage collector, their pods) once its TTL
    /// has passed; Jobs this resource does not own are left alone.
    async fn remove_jobs(&self, ttl: i32) -> Result<(), Error> {
        let mut removed = Vec::new();
        for component in Component::ALL {
            let name = job_name(&self.name, component);
            match self.own_job(&name).await {
                Ok(Some(_)) => {
                    self.jobs.delete(&name, &DeleteParams::background()).await?;
                    removed.push(name);
                }
                Ok(None) | Err(Error::ForeignJob(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if !removed.is_empty() {
            let note = format!(
                "removed Jobs {} and their pods: spec.ttlSecondsAfterFinished is {ttl}",
                removed.join(", ")
            );
            self.event(EventType::Normal, "JobsRemoved", "DeleteJob", &note)
                .await;
        }
        Ok(())
    }

    /// Writes `new` with a server-side apply of the status, if it differs from `old` in more
    /// than timestamps; publishes an Event when the phase changed.
    async fn write_status(
        &self,
        old: Option<&FeatureExtractionStatus>,
        new: &FeatureExtractionStatus,
    ) -> Result<(), Error> {
        if !status::changed(old, new) {
            return Ok(());
        }
        let api: Api<FeatureExtraction> = Api::namespaced(
            self.ctx.client.clone(),
            &self.fx.namespace().unwrap_or_default(),
        );
        let patch = serde_json::json!({
            "apiVersion": FeatureExtraction::api_version(&()),
            "kind": FeatureExtraction::kind(&()),
            "status": new,
        });
        let params = PatchParams::apply(&self.ctx.settings.field_manager).force();
        api.patch_status(&self.name, &params, &Patch::Apply(&patch))
            .await?;
        let uid = self.fx.metadata.uid.as_deref().unwrap_or_default();
        self.ctx.metrics.status_written(uid, old, new);
        let (was, is) = (old.and_then(|s| s.phase), new.phase);
        if was != is
            && let Some(phase) = is
        {
            let kind = if phase == Phase::Failed {
                EventType::Warning
            } else {
                EventType::Normal
            };
            let message = new.message.as_deref().unwrap_or_default();
            self.event(kind, phase.as_str(), "Reconcile", message).await;
        }
        Ok(())
    }

    /// Publishes an Event about the resource; a failure to publish is logged, not fatal.
    async fn event(&self, kind: EventType, reason: &str, action: &str, note: &str) {
        let event = Event {
            type_: kind,
            reason: reason.into(),
            note: Some(crate::observe::shorten(note, 1024)),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&event, &self.fx.object_ref(&()))
            .await
        {
            if namespace_terminating(&e) {
                tracing::debug!(fx = %self.name, "no Event: the namespace is being deleted");
                return;
            }
            tracing::warn!(fx = %self.name, error = %e, "publishing an Event failed");
        }
    }
}

/// Which Job of the reduce step (`chain`, in order) a reconcile brings in line, creating it if
/// missing: the last one that exists, or the one after it once it completed; the first when
/// none does. A failed Job is left alone, and fails the run.
fn next_reduce_job(chain: &[ReduceStepJob], jobs: &mut Jobs) -> ReduceStepJob {
    let complete = |job: &Option<Job>| {
        job.as_ref()
            .and_then(|j| j.status.as_ref())
            .is_some_and(|s| job_condition(s, "Complete").is_some())
    };
    let last = chain
        .iter()
        .rposition(|step| jobs.of(step.component()).0.is_some());
    match last {
        None => chain[0],
        Some(i) if i + 1 < chain.len() && complete(jobs.of(chain[i].component()).0) => chain[i + 1],
        Some(i) => chain[i],
    }
}

/// The plan the status records: its image and shard totals are written in the same status
/// write as the run's first phase after planning, so a restart never plans again.
pub fn recorded_plan(
    spec: &FeatureExtractionSpec,
    old: Option<&FeatureExtractionStatus>,
) -> PlanState {
    let Some(old) = old else {
        return PlanState::NotStarted;
    };
    match (&old.images, &old.shards) {
        (Some(images), Some(shards)) if shards.total > 0 => PlanState::Ready(PlanTotals {
            images: images.total,
            bytes: 0,
            shards: shards.total,
            // As the planner raised it, if it did.
            images_per_shard: shard_plan(images.total, spec.sharding.images_per_shard)
                .map_or(spec.sharding.images_per_shard, |s| s.images_per_shard),
        }),
        _ => PlanState::NotStarted,
    }
}

/// Whether the run failed before a plan was recorded: nothing of it ran.
fn failed_before_planning(status: &FeatureExtractionStatus) -> bool {
    status.phase == Some(Phase::Failed) && status.shards.is_none()
}

/// Whether the run was refused by the operator's checks (`validate`), which depend on its
/// settings, rather than by its plan step.
fn refused_by_settings(status: &FeatureExtractionStatus) -> bool {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .is_some_and(|c| crate::validate::SETTINGS_REASONS.contains(&c.reason.as_str()))
}

/// The termination summary of the reduce pod that succeeded last (its PCA and label
/// agreement go into the status).
fn reduce_summary(pods: &[PodObservation]) -> Option<&pomona_crds::contract::PodSummary> {
    pods.iter()
        .filter(|p| p.phase == PodPhase::Succeeded)
        .max_by(|a, b| a.finished_at.cmp(&b.finished_at))
        .and_then(|p| p.summary.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), BACKOFF.1);
    }

    #[test]
    fn a_namespace_being_deleted_is_told_apart_from_a_missing_permission() {
        let refused = |cause: &str| {
            let status = kube::core::Status::failure("forbidden", "Forbidden")
                .with_code(403)
                .with_details(kube::core::response::StatusDetails {
                    causes: vec![kube::core::response::StatusCause {
                        reason: cause.into(),
                        message: String::new(),
                        field: "metadata.namespace".into(),
                    }],
                    name: "run.1".into(),
                    group: "events.k8s.io".into(),
                    kind: "events".into(),
                    uid: String::new(),
                    retry_after_seconds: 0,
                });
            kube::Error::Api(status.boxed())
        };
        assert!(namespace_terminating(&refused("NamespaceTerminating")));
        assert!(Error::Api(refused("NamespaceTerminating")).namespace_terminating());
        assert!(!namespace_terminating(&refused("FieldValueForbidden")));
        let rbac = kube::core::Status::failure("cannot create events", "Forbidden").with_code(403);
        assert!(!namespace_terminating(&kube::Error::Api(rbac.boxed())));
        assert!(!Error::Timeout.namespace_terminating());
    }

    #[test]
    fn a_plan_is_recorded_once_the_status_has_totals() {
        let spec: FeatureExtractionSpec = serde_yaml::from_str::<FeatureExtraction>(include_str!(
            "../../crds/examples/minimal.yaml"
        ))
        .unwrap()
        .spec;
        assert_eq!(recorded_plan(&spec, None), PlanState::NotStarted);
        let mut status = FeatureExtractionStatus::default();
        assert_eq!(recorded_plan(&spec, Some(&status)), PlanState::NotStarted);
        status.images = Some(pomona_crds::ImageCounts {
            total: 1260,
            ..Default::default()
        });
        status.shards = Some(pomona_crds::ShardCounts {
            total: 3,
            ..Default::default()
        });
        assert_eq!(
            recorded_plan(&spec, Some(&status)),
            PlanState::Ready(PlanTotals {
                images: 1260,
                bytes: 0,
                shards: 3,
                images_per_shard: spec.sharding.images_per_shard
            })
        );
    }
}
