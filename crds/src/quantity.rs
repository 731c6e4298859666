//! Kubernetes resource quantities (`250m`, `1.5`, `512Mi`, `1G`, `129e6`) as whole numbers:
//! CPU in millicores, everything else in units (bytes). Rounds up, as the scheduler does.

/// Millicores of a CPU quantity (`"250m"` → 250, `"2"` → 2000), or `None` when malformed.
pub fn millicores(q: &str) -> Option<u64> {
    scaled(q, 1000)
}

/// The value of a quantity in its base unit (`"512Mi"` → 536870912), or `None` when malformed.
pub fn units(q: &str) -> Option<u64> {
    scaled(q, 1)
}

/// `q` times `scale`, rounded up.
fn scaled(q: &str, scale: u64) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    let value = number * factor * scale as f64;
    (value >= 0.0 && value.is_finite()).then(|| value.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_forms() {
        assert_eq!(millicores("250m"), Some(250));
        assert_eq!(millicores("1"), Some(1000));
        assert_eq!(millicores("0.5"), Some(500));
        assert_eq!(millicores("1500u"), Some(2), "rounded up");
        assert_eq!(units("512Mi"), Some(512 << 20));
        assert_eq!(units("1Gi"), Some(1 << 30));
        assert_eq!(units("1G"), Some(1_000_000_000));
        assert_eq!(units("129e6"), Some(129_000_000));
        assert_eq!(units("128974848"), Some(128_974_848));
        assert_eq!(units("12Qi"), None);
        assert_eq!(units(""), None);
        assert_eq!(millicores("-1"), None);
    }
}
