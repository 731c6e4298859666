//! `pomona sweep`: which model and input size to run, from measured speed and quality.
//!
//! For each model × size, in turn on this machine, the sweep runs the real pipeline on the
//! labelled images into `<output>/settings/<model stem>-<size>/` (a run of its own, redone
//! from scratch): plan, extraction of every shard with the model already loaded (timed:
//! images/s of decode, inference and writing), then the reduce step with a PCA of
//! `--components`. It reports per setting:
//! - the label agreement ([`crate::reduce::agreement`]) on the features, and on the PCA (the
//!   run's own `labelAgreement`), on the same fixed-seed sample of up to 10,000 images;
//! - the mean cosine of the sample's features to their features at the reference setting (the
//!   first model at its largest size).
//!
//! It prints the table and the `recommended:` line ([`table`]), and writes `sweep.json` and
//! `report/sweep.png` (speed against agreement).

pub mod table;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser};
use pomona_crds::LabelMode;
use pomona_crds::contract::OutputLayout;
use pomona_storage::Storage;
use pomona_storage::plan::{PlanOptions, PlanRun, load_or_create_plan};
use serde::Serialize;

use crate::Threads;
use crate::cli::{self, DEFAULT_BATCH_SIZE, ModelArgs, S3Args, TuningArgs};
use crate::reduce::agreement::{self, loo_1nn_accuracy};
use crate::reduce::pca::Keep;
use crate::reduce::project::FeatureFile;
use crate::reduce::sample::Reservoir;
use crate::reduce::{self, Mode, ShardList};
use crate::report;
use table::SettingResult;

/// The options of `pomona sweep`.
#[derive(Args, Clone, Debug)]
pub struct SweepArgs {
    /// Labelled images (each labelled by its folder): s3://bucket/prefix/ or a folder.
    #[arg(long)]
    pub input: String,
    /// Where the sweep writes sweep.json, report/sweep.png and one run per setting under
    /// settings/.
    #[arg(long)]
    pub output: String,
    /// Input sizes (square), comma-separated. The models must take them (dynamic-size models).
    #[arg(long, value_delimiter = ',', default_value = "96,128,160,192,224")]
    pub sizes: Vec<u32>,
    /// A model to try; repeat for several. The first at the largest size is the reference.
    #[arg(long = "model", required = true)]
    pub models: Vec<String>,
    /// Components of each setting's PCA.
    #[arg(long, default_value_t = reduce::DEFAULT_COMPONENTS)]
    pub components: usize,
    /// Images per inference batch.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Inference threads, each running its own single-threaded ONNX Runtime session. Default:
    /// the CPUs available to the process.
    #[arg(long, env = "POMONA_THREADS")]
    pub threads: Option<usize>,
    /// The ONNX Runtime shared library. Default: $ORT_DYLIB_PATH.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub onnxruntime: Option<PathBuf>,
    /// S3 settings, for images or outputs on S3.
    #[command(flatten)]
    pub s3: S3Args,
}

/// `sweep.json`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepSummary {
    /// `pomona-sweep/1`.
    pub format: &'static str,
    /// The images.
    pub input: String,
    /// Components of each PCA.
    pub components: usize,
    /// Images in the agreement and cosine sample.
    pub sample: usize,
    /// The setting the cosines are to.
    pub reference: String,
    /// Every setting, models in the order given, sizes ascending.
    pub settings: Vec<SettingResult>,
    /// The recommended setting's name.
    pub recommended: Option<String>,
    /// How it is chosen.
    pub criterion: String,
}

/// The model options of one setting: `pomona run`'s defaults with this model, size, batch,
/// threads and ONNX Runtime.
fn model_args(args: &SweepArgs, model: &str, size: u32) -> anyhow::Result<(ModelArgs, TuningArgs)> {
    #[derive(Parser)]
    struct One {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        tuning: TuningArgs,
    }
    let mut line = vec![
        "sweep".to_string(),
        format!("--model={model}"),
        format!("--size={size}"),
        format!("--batch-size={}", args.batch_size),
    ];
    if let Some(t) = args.threads {
        line.push(format!("--threads={t}"));
    }
    if let Some(ort) = &args.onnxruntime {
        line.push(format!("--onnxruntime={}", ort.display()));
    }
    let one = One::try_parse_from(line)?;
    Ok((one.model, one.tuning))
}

/// The setting's name: the model's file stem and the size.
pub fn setting_name(model: &str, size: u32) -> String {
    let file = model.rsplit('/').next().unwrap_or(model);
    let stem = file.strip_suffix(".onnx").unwrap_or(file);
    format!("{stem}-{size}")
}

/// A fixed-seed sample of a run's features: path → (label, vector).
type Sample = BTreeMap<String, (String, Vec<f32>)>;

async fn feature_sample(out: &Storage, shards: u32) -> anyhow::Result<Sample> {
    let layout = OutputLayout::new(&out.uri());
    let mut sample = Reservoir::new(agreement::MAX_SAMPLE, agreement::SEED);
    for shard in 0..shards {
        let uri = layout.features(shard);
        let data = out.get(&out.relative(&uri)?).await?;
        let file = FeatureFile::open(data).with_context(|| uri.clone())?;
        let dim = file.dim;
        for rows in file.batches()? {
            let rows = rows?;
            for (i, v) in rows.values.chunks_exact(dim).enumerate() {
                sample.offer_with(|| {
                    (
                        rows.paths.value(i).to_string(),
                        rows.labels.value(i).to_string(),
                        v.to_vec(),
                    )
                });
            }
        }
    }
    Ok(sample
        .into_items()
        .into_iter()
        .map(|(p, l, v)| (p, (l, v)))
        .collect())
}

fn sample_agreement(sample: &Sample) -> Option<f64> {
    let mut ids = BTreeMap::new();
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for (label, v) in sample.values().filter(|(l, _)| !l.is_empty()) {
        let next = ids.len() as u32;
        labels.push(*ids.entry(label.clone()).or_insert(next));
        rows.extend_from_slice(v);
    }
    let dim = sample.values().next()?.1.len();
    if ids.len() < 2 {
        return None;
    }
    loo_1nn_accuracy(&rows, dim, &labels).map(|a| (a * 1e6).round() / 1e6)
}

fn mean_cosine(sample: &Sample, reference: &Sample) -> Option<f64> {
    let mut sum = 0.0;
    let mut n = 0u64;
    for (path, (_, v)) in sample {
        let Some((_, r)) = reference.get(path) else {
            continue;
        };
        if r.len() != v.len() {
            continue;
        }
        let dot: f64 = v
            .iter()
            .zip(r)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let na: f64 = v.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = r.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
        if na > 0.0 && nb > 0.0 {
            sum += dot / (na * nb);
            n += 1;
        }
    }
    (n > 0).then(|| (sum / n as f64 * 1e6).round() / 1e6)
}

/// Runs one setting into `<output>/settings/<name>/` (see the module docs).
async fn run_setting(
    args: &SweepArgs,
    sweep_root: &Storage,
    source: &Storage,
    model: &str,
    size: u32,
) -> anyhow::Result<(SettingResult, Sample)> {
    let config = args.s3.config();
    let name = setting_name(model, size);
    let layout = OutputLayout::new(&sweep_root.uri());
    let uri = layout.sweep_setting(&name);
    sweep_root
        .delete_prefix(&sweep_root.relative(&uri)?)
        .await?;
    let out = Storage::open(&uri, &config).await?;
    let options = PlanOptions {
        include: ["*.jpg", "*.jpeg", "*.png", "*.webp"]
            .map(String::from)
            .to_vec(),
        label: LabelMode::ParentDirectory,
        images_per_shard: 2000,
    };
    let (model_args, tuning) = model_args(args, model, size)?;
    let extractor = model_args
        .load(&tuning, &config, Threads::detect(None, None))
        .await
        .with_context(|| format!("{model} at {size}"))?;
    let identity = options.identity(
        None,
        extractor.provenance().model_sha256.clone(),
        model_args.preprocessing(),
    );
    let (plan, _) =
        load_or_create_plan(source, &out, &options, &identity, &PlanRun::default()).await?;
    let scratch = cli::scratch_dir();
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut processed = 0;
    for shard in 0..plan.shards {
        let outcome = extractor
            .extract_shard(source, &out, &plan, shard, &scratch, done.clone(), None)
            .await
            .with_context(|| format!("{name}: shard {shard}"))?;
        processed += outcome.counts.processed;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(extractor);
    let mode = Mode::Fit {
        keep: Keep::Components(args.components),
        default: true,
    };
    let request = reduce::ReduceRequest {
        mode: &mode,
        stage: reduce::ReduceStage::Whole,
        csv: false,
        failed_shards: &ShardList::default(),
        clusters: None,
        merged_blocks: None,
    };
    let reduced = reduce::reduce(&out, &config, &request, None)
        .await
        .with_context(|| format!("{name}: reduce"))?;
    let sample = feature_sample(&out, plan.shards).await?;
    let result = SettingResult {
        name,
        model: model.to_string(),
        size,
        images: processed,
        extract_seconds: (seconds * 1000.0).round() / 1000.0,
        images_per_second: (processed as f64 / seconds * 10.0).round() / 10.0,
        agreement_features: sample_agreement(&sample),
        agreement_pca: reduced.summary().and_then(|s| s.label_agreement),
        cosine_to_reference: None,
    };
    crate::say!(
        "pomona: sweep: {} at {size}: {:.1} images/s, agreement {:?} on the features, {:?} on \
         the PCA",
        result.model,
        result.images_per_second,
        result.agreement_features,
        result.agreement_pca
    );
    Ok((result, sample))
}

/// Runs the sweep (see the module docs) and returns its summary.
pub async fn sweep(args: &SweepArgs) -> anyhow::Result<SweepSummary> {
    let config = args.s3.config();
    let source = Storage::open(&args.input, &config).await?;
    let root = Storage::open(&args.output, &config).await?;
    let layout = OutputLayout::new(&root.uri());
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let largest = *sizes.last().context("--sizes names no size")?;
    // The reference first, so that every other setting has its cosine.
    let (mut reference, reference_sample) =
        run_setting(args, &root, &source, &args.models[0], largest).await?;
    reference.cosine_to_reference = Some(1.0);
    let mut results = Vec::new();
    for (m, model) in args.models.iter().enumerate() {
        for &size in &sizes {
            if m == 0 && size == largest {
                results.push(reference.clone());
                continue;
            }
            let (mut result, sample) = run_setting(args, &root, &source, model, size).await?;
            result.cosine_to_reference = mean_cosine(&sample, &reference_sample);
            results.push(result);
        }
    }
    print!("{}", table::render(&results, args.components));
    let recommended = table::recommend(&results).map(|i| results[i].name.clone());
    let png = report::sweep_png(&results)?;
    root.put(&root.relative(&layout.sweep_png())?, Bytes::from(png))
        .await?;
    let summary = SweepSummary {
        format: "pomona-sweep/1",
        input: source.uri(),
        components: args.components,
        sample: reference_sample.len(),
        reference: reference.name,
        settings: results,
        recommended,
        criterion: format!(
            "the fastest setting whose label agreement on the PCA is within {} of the best",
            table::TOLERANCE
        ),
    };
    let mut json = serde_json::to_vec_pretty(&summary)?;
    json.push(b'\n');
    root.put(&root.relative(&layout.sweep_json())?, Bytes::from(json))
        .await?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_named_by_model_stem_and_size() {
        assert_eq!(
            setting_name(
                "../shared/models/mobilenetv2_features_int8_dynamic.onnx",
                160
            ),
            "mobilenetv2_features_int8_dynamic-160"
        );
        assert_eq!(setting_name("s3://b/m/x.onnx", 96), "x-96");
        assert_eq!(setting_name("plain", 224), "plain-224");
    }

    #[test]
    fn cosines_are_matched_by_path() {
        let s = |v: &[(&str, [f32; 2])]| -> Sample {
            v.iter()
                .map(|(p, x)| (p.to_string(), ("l".to_string(), x.to_vec())))
                .collect()
        };
        let reference = s(&[("a", [1.0, 0.0]), ("b", [0.0, 1.0])]);
        let other = s(&[("b", [0.0, 3.0]), ("a", [1.0, 1.0]), ("c", [5.0, 5.0])]);
        let want = (1.0 + std::f64::consts::FRAC_1_SQRT_2) / 2.0;
        assert!((mean_cosine(&other, &reference).unwrap() - want).abs() < 1e-6);
        assert_eq!(mean_cosine(&s(&[("z", [1.0, 0.0])]), &reference), None);
    }

    #[test]
    fn model_options_keep_the_run_defaults() {
        let args = SweepArgs::try_parse_from_for_test(&["--model", "m.onnx", "--threads", "2"]);
        let (m, tuning) = model_args(&args, "m.onnx", 160).unwrap();
        assert_eq!(
            (m.size, tuning.batch_size, tuning.threads),
            (160, Some(DEFAULT_BATCH_SIZE), Some(2))
        );
        assert_eq!(m.model.as_deref(), Some("m.onnx"));
        assert_eq!(args.sizes, [96, 128, 160, 192, 224]);
    }

    impl SweepArgs {
        fn try_parse_from_for_test(extra: &[&str]) -> Self {
            #[derive(Parser)]
            struct P {
                #[command(flatten)]
                sweep: SweepArgs,
            }
            let mut line = vec!["sweep", "--input", "in/", "--output", "out/"];
            line.extend_from_slice(extra);
            P::try_parse_from(line).unwrap().sweep
        }
    }
}
