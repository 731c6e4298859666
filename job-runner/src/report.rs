//! The report of the reduce step: pictures people would rather look at than read, and the
//! summary.
//!
//! | file | content |
//! | --- | --- |
//! | `report/explained_variance.png` | per-component explained variance ratio (bars) and the cumulative curve, 1000×600 |
//! | `report/scatter.png` | every image (or a fixed-seed sample of 50,000) on the first two components, one colour per label, with a legend, 1200×800 |
//! | `report/summary.json` | counts, the PCA (k, explained variance), provenance and timings ([`ReduceSummary`]) |
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
        let bounds = |f: fn(&(f32, f32, usize)) -> f32| {
            let (lo, hi) = self
                .points
                .iter()
                .map(f)
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                });
            if lo > hi {
                return (-1.0, 1.0);
            }
            let pad = ((hi - lo) * 0.05).max(1e-3);
            (f64::from(lo - pad), f64::from(hi + pad))
        };
        let (x0, x1) = bounds(|p| p.0);
        let (y0, y1) = bounds(|p| p.1);
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
    /// Seconds per phase.
    pub seconds: Timings,
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
