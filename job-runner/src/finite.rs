//! Feature vectors holding NaN or infinity: dead letters, never features or statistics.

/// The dead-letter reason of an image whose feature vector is not finite.
pub const NON_FINITE: &str = "non-finite features: the model gave NaN or infinity";

/// Moves the rows whose feature vector holds a NaN or an infinity to the dead letters.
/// `features` holds one `dim`-long vector per row whose failure is `None`, in row order; the
/// vectors of the rows moved are removed from it. Returns how many rows were moved.
pub fn screen(failures: &mut [Option<String>], features: &mut Vec<f32>, dim: usize) -> usize {
    if dim == 0 || features.iter().all(|x| x.is_finite()) {
        return 0;
    }
    let mut kept = Vec::with_capacity(features.len());
    let mut vectors = features.chunks_exact(dim);
    let mut moved = 0;
    for failure in failures.iter_mut().filter(|f| f.is_none()) {
        let Some(vector) = vectors.next() else { break };
        if vector.iter().all(|x| x.is_finite()) {
            kept.extend_from_slice(vector);
        } else {
            *failure = Some(NON_FINITE.to_string());
            moved += 1;
        }
    }
    *features = kept;
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_with_nan_or_infinity_become_dead_letters() {
        let mut failures = vec![None, Some("corrupt".to_string()), None, None, None];
        let mut features = vec![
            1.0,
            2.0, // row 0
            f32::NAN,
            0.0, // row 2
            3.0,
            4.0, // row 3
            5.0,
            f32::NEG_INFINITY, // row 4
        ];
        assert_eq!(screen(&mut failures, &mut features, 2), 2);
        assert_eq!(features, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(failures[0], None);
        assert_eq!(failures[1].as_deref(), Some("corrupt"));
        assert_eq!(failures[2].as_deref(), Some(NON_FINITE));
        assert_eq!(failures[3], None);
        assert_eq!(failures[4].as_deref(), Some(NON_FINITE));

        let mut clean = vec![1.0, 2.0];
        assert_eq!(screen(&mut [None], &mut clean, 2), 0);
        assert_eq!(clean, [1.0, 2.0]);
    }
}
