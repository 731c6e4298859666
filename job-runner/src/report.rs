//! The report of the reduce step: pictures people would rather look at than read, and the
//! summary.
//!
//! | file | content |
//! | --- | --- |
//! | `report/explained_variance.png` | per-component explained variance ratio (bars) and the cumulative curve, 1000×600 |
//! | `report/scatter.png` | every image (or a fixed-seed sample of 50,000) on the first two components, one colour per label, with a legend, 1200×800 |
//! | `report/clusters.png` | with `--clusters`: the same points coloured by cluster, beside them coloured by label, 1800×800 |
//! | `report/summary.json` | counts, the PCA (k, explained variance), label agreement, clustering, provenance and timings ([`ReduceSummary`]) |
//!
//! The pictures are drawn by plotters into a memory buffer (no display, no system fonts: DejaVu
//! Sans is compiled in) and encoded as PNG.

use std::collections::BTreeMap;
use std::sync::Once;

use anyhow::Context;
use image::ImageEncoder;
use plotters::prelude::*;
use serde::Serialize;

/// Size of `explained_variance.png`.
pub const VARIANCE_SIZE: (u32, u32) = (1000, 600);
/// Size of `scatter.png`.
pub const SCATTER_SIZE: (u32, u32) = (1200, 800);
/// Size of `clusters.png`.
pub const CLUSTERS_SIZE: (u32, u32) = (1800, 800);
/// Most points drawn on the scatter plot (a fixed-seed sample beyond that).
pub const MAX_POINTS: usize = 50_000;
/// Most labels named in the scatter plot's legend (the most frequent ones).
const MAX_LEGEND: usize = 36;

fn register_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        for (style, bytes) in [
            (FontStyle::Normal, dejavu::sans::regular()),
            (FontStyle::Bold, dejavu::sans::bold()),
        ] {
            if plotters::style::register_font("sans-serif", style, bytes).is_err() {
                crate::say!("pomona: cannot load the embedded font; the pictures have no text");
            }
        }
    });
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> anyhow::Result<Vec<u8>> {
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(rgb, w, h, image::ExtendedColorType::Rgb8)
        .context("cannot encode a PNG")?;
    Ok(png)
}

/// Draws `draw` on a white canvas of `size` and returns it as PNG.
fn render(
    size: (u32, u32),
    draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<u8>> {
    register_fonts();
    let mut rgb = vec![255u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        draw(root.clone())?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    encode_png(&rgb, size)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw: {e:?}")
}

/// `explained_variance.png`: a bar per component (its explained variance ratio) and the
/// cumulative curve; with `target`, a dashed line at the variance to keep.
pub fn explained_variance_png(ratios: &[f64], target: Option<f64>) -> anyhow::Result<Vec<u8>> {
    let k = ratios.len();
    let cumulative: Vec<f64> = ratios
        .iter()
        .scan(0.0, |s, r| {
            *s += r;
            Some(*s)
        })
        .collect();
    let total = cumulative.last().copied().unwrap_or(0.0);
    render(VARIANCE_SIZE, |root| {
        root.fill(&WHITE).map_err(plot_err)?;
        let title = format!(
            "Explained variance of {k} principal component{} ({:.1}% in all)",
            if k == 1 { "" } else { "s" },
            total * 100.0
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 26).into_font())
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(0.5f64..k as f64 + 0.5, 0.0f64..1.0)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("principal component")
            .y_desc("fraction of the total variance")
            .x_labels(k.min(20))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(plot_err)?;
        let bar = RGBColor(70, 130, 180);
        let half = 0.4;
        chart
            .draw_series(ratios.iter().enumerate().map(|(i, &r)| {
                let x = i as f64 + 1.0;
                Rectangle::new([(x - half, 0.0), (x + half, r)], bar.filled())
            }))
            .map_err(plot_err)?
            .label("per component")
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], bar.filled()));
        let line = RGBColor(230, 120, 20);
        chart
            .draw_series(LineSeries::new(
                cumulative
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| (i as f64 + 1.0, c)),
                line.stroke_width(3),
            ))
            .map_err(plot_err)?
            .label("cumulative")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], line.stroke_width(3)));
        if k <= 100 {
            chart
                .draw_series(
                    cumulative
                        .iter()
                        .enumerate()
                        .map(|(i, &c)| Circle::new((i as f64 + 1.0, c), 3, line.filled())),
                )
                .map_err(plot_err)?;
        }
        if let Some(f) = target {
            let grey = RGBColor(90, 90, 90);
            let dashes = (0..k * 2).map(|i| {
                let x0 = 0.5 + i as f64 * 0.5;
                PathElement::new([(x0, f), (x0 + 0.3, f)], grey.stroke_width(2))
            });
            chart
                .draw_series(dashes)
                .map_err(plot_err)?
                .label(format!("variance to keep ({:.0}%)", f * 100.0))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], grey));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(plot_err)?;
        Ok(())
    })
}

/// A colour for label `i`: hues stepped by the golden ratio (so that neighbours in name order,
/// such as "Tomato 1" and "Tomato 2", differ), at three lightness levels.
fn colour(i: usize) -> HSLColor {
    let hue = (0.07 + i as f64 * 0.618_033_988_75) % 1.0;
    let light = [0.45, 0.32, 0.62][i % 3];
    HSLColor(hue, 0.8, light)
}

/// Points of the scatter plot, sampled with a fixed seed beyond [`MAX_POINTS`] so that memory
/// stays flat whatever the number of images.
#[derive(Debug, Default)]
pub struct Scatter {
    labels: BTreeMap<String, (usize, u64)>,
    points: Vec<(f32, f32, usize)>,
    seen: u64,
    rng: u64,
}

impl Scatter {
    /// An empty plot.
    pub fn new() -> Self {
        Self {
            rng: 0x9E37_79B9_7F4A_7C15,
            ..Self::default()
        }
    }

    /// Adds one image on the first two components.
    pub fn push(&mut self, label: &str, pc1: f32, pc2: f32) {
        let next = self.labels.len();
        let entry = self.labels.entry(label.to_string()).or_insert((next, 0));
        entry.1 += 1;
        let id = entry.0;
        self.seen += 1;
        if self.points.len() < MAX_POINTS {
            self.points.push((pc1, pc2, id));
            return;
        }
        // Reservoir sampling (algorithm R) with a fixed-seed generator.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let j = self.rng % self.seen;
        if (j as usize) < MAX_POINTS {
            self.points[j as usize] = (pc1, pc2, id);
        }
    }

    /// Images per label.
    pub fn label_counts(&self) -> BTreeMap<String, u64> {
        self.labels
            .iter()
            .map(|(l, &(_, n))| (l.clone(), n))
            .collect()
    }

    /// `scatter.png`: the points coloured by label, with a legend of the most frequent labels.
    /// `axis_ratios` are the explained variance ratios of the two components.
    pub fn png(&self, axis_ratios: (f64, Option<f64>)) -> anyhow::Result<Vec<u8>> {
        // Labels in name order get colours; the legend lists the most frequent first.
        let n = self.labels.len();
        let mut colours = vec![HSLColor(0.0, 0.0, 0.0); n];
        for (rank, (_, &(id, _))) in self.labels.iter().enumerate() {
            colours[id] = colour(rank);
        }
        let mut legend: Vec<(&String, usize, u64)> =
            self.labels.iter().map(|(l, &(id, c))| (l, id, c)).collect();
        legend.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(b.0)));

        let (x0, x1) = axis_range(self.points.iter().map(|p| p.0));
        let (y0, y1) = axis_range(self.points.iter().map(|p| p.1));
        let sampled = self.seen > self.points.len() as u64;
        render(SCATTER_SIZE, |root| {
            root.fill(&WHITE).map_err(plot_err)?;
            let (plot, side) = root.split_horizontally(SCATTER_SIZE.0 - 290);
            let title = format!(
                "{} image{} on the first two principal components{}",
                self.seen,
                if self.seen == 1 { "" } else { "s" },
                if sampled {
                    format!(" ({} drawn)", self.points.len())
                } else {
                    String::new()
                }
            );
            let pct = |r: f64| format!("{:.1}%", r * 100.0);
            let mut chart = ChartBuilder::on(&plot)
                .caption(title, ("sans-serif", 24).into_font())
                .margin(20)
                .x_label_area_size(50)
                .y_label_area_size(70)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .x_desc(format!("PC1 ({} of the variance)", pct(axis_ratios.0)))
                .y_desc(match axis_ratios.1 {
                    Some(r) => format!("PC2 ({} of the variance)", pct(r)),
                    None => "PC2 (not fitted: k = 1)".to_string(),
                })
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 18))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(plot_err)?;
            chart
                .draw_series(self.points.iter().map(|&(x, y, id)| {
                    Circle::new(
                        (f64::from(x), f64::from(y)),
                        3,
                        colours[id].mix(0.75).filled(),
                    )
                }))
                .map_err(plot_err)?;
            let font = ("sans-serif", 15).into_font();
            let mut y = 40;
            for &(label, id, count) in legend.iter().take(MAX_LEGEND) {
                side.draw(&Circle::new((16, y), 6, colours[id].filled()))
                    .map_err(plot_err)?;
                let mut text = format!("{label} ({count})");
                if text.chars().count() > 30 {
                    text = text.chars().take(29).collect::<String>() + "…";
                }
                side.draw(&Text::new(text, (30, y - 9), font.clone()))
                    .map_err(plot_err)?;
                y += 20;
            }
            if legend.len() > MAX_LEGEND {
                let more = format!("… and {} more labels", legend.len() - MAX_LEGEND);
                side.draw(&Text::new(more, (10, y - 9), font.clone()))
                    .map_err(plot_err)?;
            }
            Ok(())
        })
    }
}

/// One image of `clusters.png`: its first two components, label and cluster.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClusterPoint {
    /// First component.
    pub x: f32,
    /// Second component.
    pub y: f32,
    /// Index of its label in the names given to [`clusters_png`].
    pub label: u32,
    /// Its cluster.
    pub cluster: u32,
}

/// How a panel of `clusters.png` colours a point.
type Paint<'a> = &'a dyn Fn(&ClusterPoint) -> HSLColor;

/// An axis's range over `values`, padded by 5 % (at least 1e-3); (-1, 1) when there are none.
fn axis_range(values: impl Iterator<Item = f32>) -> (f64, f64) {
    let (lo, hi) = values.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return (-1.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (f64::from(lo - pad), f64::from(hi + pad))
}

/// `clusters.png`: `points` on the first two components, coloured by cluster (left) and by
/// label (right), on the same axes. `labels` names the label indexes.
pub fn clusters_png(
    points: &[ClusterPoint],
    labels: &[String],
    k: usize,
    axis_ratios: (f64, Option<f64>),
) -> anyhow::Result<Vec<u8>> {
    let (x0, x1) = axis_range(points.iter().map(|p| p.x));
    let (y0, y1) = axis_range(points.iter().map(|p| p.y));
    // Labels get colours in name order, as in scatter.png.
    let mut by_name: Vec<usize> = (0..labels.len()).collect();
    by_name.sort_by(|&a, &b| labels[a].cmp(&labels[b]));
    let mut label_colours = vec![HSLColor(0.0, 0.0, 0.0); labels.len()];
    for (rank, &id) in by_name.iter().enumerate() {
        label_colours[id] = colour(rank);
    }
    let pct = |r: f64| format!("{:.1}%", r * 100.0);
    let x_desc = format!("PC1 ({} of the variance)", pct(axis_ratios.0));
    let y_desc = match axis_ratios.1 {
        Some(r) => format!("PC2 ({} of the variance)", pct(r)),
        None => "PC2 (not fitted: k = 1)".to_string(),
    };
    render(CLUSTERS_SIZE, |root| {
        root.fill(&WHITE).map_err(plot_err)?;
        let (left, right) = root.split_horizontally(CLUSTERS_SIZE.0 / 2);
        let panels: [(_, String, Paint<'_>); 2] = [
            (
                left,
                format!("{} images by cluster (k = {k})", points.len()),
                &|p| colour(p.cluster as usize),
            ),
            (right, format!("by label ({} labels)", labels.len()), &|p| {
                label_colours[p.label as usize]
            }),
        ];
        for (area, title, paint) in panels {
            let mut chart = ChartBuilder::on(&area)
                .caption(title, ("sans-serif", 24).into_font())
                .margin(20)
                .x_label_area_size(50)
                .y_label_area_size(70)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .x_desc(x_desc.as_str())
                .y_desc(y_desc.as_str())
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 18))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(plot_err)?;
            chart
                .draw_series(points.iter().map(|p| {
                    Circle::new(
                        (f64::from(p.x), f64::from(p.y)),
                        3,
                        paint(p).mix(0.75).filled(),
                    )
                }))
                .map_err(plot_err)?;
        }
        Ok(())
    })
}

/// Size of a sweep's `report/sweep.png`.
pub const SWEEP_SIZE: (u32, u32) = (1200, 800);

/// A sweep's `report/sweep.png`: images/s against the label agreement on the PCA, one point
/// per setting labelled with its size, one colour per model (settings without an agreement
/// are left out).
pub fn sweep_png(results: &[crate::sweep::table::SettingResult]) -> anyhow::Result<Vec<u8>> {
    let mut models: Vec<&str> = Vec::new();
    for r in results {
        if !models.contains(&r.model.as_str()) {
            models.push(&r.model);
        }
    }
    let points: Vec<(f64, f64, usize, u32)> = results
        .iter()
        .filter_map(|r| {
            let m = models.iter().position(|m| *m == r.model)?;
            Some((r.images_per_second, r.agreement_pca?, m, r.size))
        })
        .collect();
    let (mut x1, mut y0, mut y1) = (1.0f64, 1.0f64, 0.0f64);
    for &(x, y, _, _) in &points {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let pad = ((y1 - y0) * 0.15).max(0.005);
    let (y0, y1) = (y0 - pad, (y1 + pad).min(1.0 + pad));
    render(SWEEP_SIZE, |root| {
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Speed against label agreement, one point per setting",
                ("sans-serif", 26).into_font(),
            )
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..x1 * 1.15, y0..y1)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("images/s (decode, inference and writing)")
            .y_desc("label agreement on the PCA (leave-one-out 1-NN)")
            .y_label_formatter(&|y| format!("{y:.3}"))
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(plot_err)?;
        for (m, model) in models.iter().enumerate() {
            let c = colour(m);
            let name = model.rsplit('/').next().unwrap_or(model).to_string();
            chart
                .draw_series(
                    points
                        .iter()
                        .filter(|p| p.2 == m)
                        .map(|&(x, y, _, _)| Circle::new((x, y), 7, c.filled())),
                )
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| Circle::new((x + 8, y), 6, c.filled()));
        }
        chart
            .draw_series(points.iter().map(|&(x, y, _, size)| {
                Text::new(size.to_string(), (x, y), ("sans-serif", 16).into_font())
            }))
            .map_err(plot_err)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(plot_err)?;
        Ok(())
    })
}

/// Seconds each phase of the reduce step took.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// Reading and merging the shards' statistics.
    pub statistics: f64,
    /// The eigen-decomposition and choice of k (or reading the reused PCA).
    pub fit: f64,
    /// Projecting every shard and writing the reduced files.
    pub project: f64,
    /// Drawing the pictures.
    pub report: f64,
    /// The label agreement.
    pub agreement: f64,
    /// The whole step.
    pub total: f64,
}

/// `report/summary.json`, also the content of `_SUCCESS`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReduceSummary {
    /// `pomona-reduce/1`.
    pub format: &'static str,
    /// Images listed by the plan.
    pub images: u64,
    /// Images with features (and reduced vectors).
    pub processed: u64,
    /// Images dead-lettered.
    pub failed: u64,
    /// Of the images with features, those whose features were copied from previous runs
    /// (`--reuse-from`) rather than extracted.
    pub reused: u64,
    /// Shards of the plan.
    pub shards: u32,
    /// Shards whose extract pods failed for good (`--failed-shards`) and whose images are all
    /// dead-lettered; absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_shards: Vec<u32>,
    /// `fit`, or `reuse` for `--pca-from`.
    pub pca_mode: &'static str,
    /// Where the reused PCA came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pca_from: Option<String>,
    /// The variance to keep that chose k, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variance_to_keep: Option<f64>,
    /// How the vectors were projected ([`projection`]).
    pub projection: &'static str,
    /// Components kept.
    pub components: usize,
    /// Values per feature vector.
    pub dim: usize,
    /// Rows the PCA was fitted on.
    pub fitted_on: u64,
    /// Total variance of the fitted features (trace of the covariance).
    pub total_variance: f64,
    /// Variance along each component.
    pub explained_variance: Vec<f64>,
    /// Fraction of the total variance along each component.
    pub explained_variance_ratio: Vec<f64>,
    /// Their sum.
    pub cumulative_explained_variance_ratio: f64,
    /// sha256 of `pca/pca.safetensors`.
    pub pca_sha256: String,
    /// sha256 of the model the features came from.
    pub model_sha256: String,
    /// The preprocessing of the features (JSON).
    pub preprocessing: String,
    /// pomona and ONNX Runtime versions of the extraction.
    pub versions: String,
    /// Images per label.
    pub labels: BTreeMap<String, u64>,
    /// The leave-one-out 1-nearest-neighbour accuracy (cosine) of the labels on the reduced
    /// vectors of a fixed-seed sample; absent without labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_agreement: Option<f64>,
    /// Images in that sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_agreement_sample: Option<usize>,
    /// The k-means of the reduced vectors, with `--clusters`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clustering: Option<crate::reduce::grouping::ClusteringSummary>,
    /// Seconds per phase.
    pub seconds: Timings,
    /// What the run used, measured like `seconds` (so it differs from run to run), for `pomona
    /// run`, which ran every step in this process; absent from a reduce pod's summary, which
    /// cannot see the other pods (the run's cost is then in the resource's `status.cost`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<pomona_crds::Cost>,
}

/// The summary's `projection`: `centred` (`(x − mean) · componentsᵀ`, pomona's and
/// scikit-learn's), or `uncentred` (`x · componentsᵀ`, Spark ML's `PCAModel.transform`, for a PCA
/// imported from Spark).
pub fn projection(centred: bool) -> &'static str {
    if centred { "centred" } else { "uncentred" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size_of(png: &[u8]) -> (u32, u32) {
        let img = image::load_from_memory(png).expect("a valid PNG");
        (img.width(), img.height())
    }

    #[test]
    fn pictures_are_pngs_of_the_documented_size() {
        let png = explained_variance_png(&[0.4, 0.2, 0.1, 0.05], Some(0.7)).unwrap();
        assert_eq!(size_of(&png), VARIANCE_SIZE);
        let mut s = Scatter::new();
        for i in 0..300 {
            let label = format!("label {}", i % 40);
            s.push(&label, (i % 17) as f32, (i % 11) as f32 - 5.0);
        }
        assert_eq!(s.label_counts().len(), 40);
        assert_eq!(size_of(&s.png((0.4, Some(0.2))).unwrap()), SCATTER_SIZE);
        assert_eq!(
            size_of(&Scatter::new().png((1.0, None)).unwrap()),
            SCATTER_SIZE
        );
        let points: Vec<ClusterPoint> = (0..300)
            .map(|i| ClusterPoint {
                x: (i % 17) as f32,
                y: (i % 11) as f32,
                label: i % 3,
                cluster: i % 5,
            })
            .collect();
        let names = ["b".to_string(), "a".to_string(), "c".to_string()];
        let png = clusters_png(&points, &names, 5, (0.4, Some(0.2))).unwrap();
        assert_eq!(size_of(&png), CLUSTERS_SIZE);
        assert_eq!(
            size_of(&clusters_png(&[], &[], 2, (1.0, None)).unwrap()),
            CLUSTERS_SIZE
        );
        let setting = |model: &str, size, speed, agreement| crate::sweep::table::SettingResult {
            name: String::new(),
            model: model.into(),
            size,
            images: 10,
            extract_seconds: 1.0,
            images_per_second: speed,
            agreement_features: agreement,
            agreement_pca: agreement,
            cosine_to_reference: None,
        };
        let sweep = [
            setting("a.onnx", 224, 200.0, Some(0.99)),
            setting("b.onnx", 160, 700.0, Some(0.985)),
            setting("b.onnx", 96, 1500.0, None),
        ];
        assert_eq!(size_of(&sweep_png(&sweep).unwrap()), SWEEP_SIZE);
    }

    #[test]
    fn scatter_memory_is_bounded() {
        let mut s = Scatter::new();
        for i in 0..(MAX_POINTS + 1000) {
            s.push("a", i as f32, 0.0);
        }
        assert_eq!(s.points.len(), MAX_POINTS);
        assert_eq!(s.label_counts()["a"], (MAX_POINTS + 1000) as u64);
    }
}
