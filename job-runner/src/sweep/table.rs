//! The figures of a sweep, the recommendation and the printed table (pure).

use serde::Serialize;

/// What one setting (a model at a size) gave.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingResult {
    /// Short name, also its folder under `settings/`: `<model file stem>-<size>`.
    pub name: String,
    /// The model URI.
    pub model: String,
    /// Width and height the images were resized to.
    pub size: u32,
    /// Images turned into features.
    pub images: u64,
    /// Seconds of the extraction (decode, inference and writing, the model already loaded).
    pub extract_seconds: f64,
    /// Images per second of that extraction.
    pub images_per_second: f64,
    /// Label agreement (leave-one-out 1-NN, cosine) on the features.
    pub agreement_features: Option<f64>,
    /// Label agreement on the PCA of the features (what a run reports as `labelAgreement`).
    pub agreement_pca: Option<f64>,
    /// Mean cosine of each image's features to its features at the reference setting.
    pub cosine_to_reference: Option<f64>,
}

/// Agreements within this much of the best one count as just as good (half a point).
pub const TOLERANCE: f64 = 0.005;

/// The index of the recommended setting: the fastest whose agreement on the PCA is within
/// [`TOLERANCE`] of the best; `None` when no setting has an agreement.
pub fn recommend(results: &[SettingResult]) -> Option<usize> {
    let best = results
        .iter()
        .filter_map(|r| r.agreement_pca)
        .fold(None, |b: Option<f64>, a| Some(b.map_or(a, |b| b.max(a))))?;
    results
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.agreement_pca
                .is_some_and(|a| a >= best - TOLERANCE - 1e-12)
        })
        .max_by(|(i, a), (j, b)| {
            a.images_per_second
                .total_cmp(&b.images_per_second)
                .then(j.cmp(i))
        })
        .map(|(i, _)| i)
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
}

/// The table, one line per setting, and the `recommended:` line.
pub fn render(results: &[SettingResult], components: usize) -> String {
    let width = results
        .iter()
        .map(|r| r.model.rsplit('/').next().unwrap_or(&r.model).len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!(
        "{:<width$}  {:>4}  {:>8}  {:>18}  {:>17}  {:>19}\n",
        "model",
        "size",
        "images/s",
        "agreement features",
        format!("agreement PCA {components}"),
        "cosine to reference"
    );
    for r in results {
        out += &format!(
            "{:<width$}  {:>4}  {:>8.1}  {:>18}  {:>17}  {:>19}\n",
            r.model.rsplit('/').next().unwrap_or(&r.model),
            r.size,
            r.images_per_second,
            opt(r.agreement_features),
            opt(r.agreement_pca),
            opt(r.cosine_to_reference)
        );
    }
    match recommend(results) {
        Some(i) => {
            let r = &results[i];
            let best = results
                .iter()
                .filter_map(|r| r.agreement_pca)
                .fold(f64::NEG_INFINITY, f64::max);
            out += &format!(
                "recommended: {} at {} ({:.1} images/s, agreement {} on the PCA, best {best:.4}: \
                 the fastest setting within {:.1} point of the best)\n",
                r.model.rsplit('/').next().unwrap_or(&r.model),
                r.size,
                r.images_per_second,
                opt(r.agreement_pca),
                TOLERANCE * 100.0
            );
        }
        None => out += "recommended: none (no setting has labels to agree with)\n",
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(model: &str, size: u32, speed: f64, agreement: Option<f64>) -> SettingResult {
        SettingResult {
            name: format!("{model}-{size}"),
            model: format!("../models/{model}.onnx"),
            size,
            images: 100,
            extract_seconds: 100.0 / speed,
            images_per_second: speed,
            agreement_features: agreement,
            agreement_pca: agreement,
            cosine_to_reference: Some(1.0),
        }
    }

    #[test]
    fn the_fastest_within_half_a_point_of_the_best_is_recommended() {
        let results = vec![
            setting("f32", 224, 200.0, Some(0.990)),
            setting("int8", 224, 300.0, Some(0.991)),
            setting("int8", 160, 700.0, Some(0.986)),
            setting("int8", 128, 1000.0, Some(0.985)),
            setting("int8", 96, 1500.0, Some(0.970)),
        ];
        assert_eq!(
            recommend(&results),
            Some(2),
            "0.986 is within 0.005 of 0.991"
        );
        let table = render(&results, 50);
        assert!(
            table.contains("recommended: int8.onnx at 160 (700.0 images/s, agreement 0.9860"),
            "{table}"
        );
        assert_eq!(table.lines().count(), 7);
        assert!(table.lines().next().unwrap().contains("agreement PCA 50"));
        // A tie in speed goes to the earlier setting; no labels, no recommendation.
        let tie = vec![
            setting("a", 1, 5.0, Some(0.9)),
            setting("b", 1, 5.0, Some(0.9)),
        ];
        assert_eq!(recommend(&tie), Some(0));
        let none = vec![setting("a", 1, 5.0, None)];
        assert_eq!(recommend(&none), None);
        assert!(render(&none, 50).contains("recommended: none"));
    }
}
