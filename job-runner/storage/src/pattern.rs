//! File-name patterns (`*.jpg`), matched case-insensitively.

/// A set of file-name patterns: `*` matches any run of characters, `?` one character, anything
/// else itself, ignoring case. A name matches the set when it matches any pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patterns {
    patterns: Vec<Vec<char>>,
    sources: Vec<String>,
}

/// A pattern that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid include pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern.
    pub pattern: String,
    /// Why.
    pub reason: &'static str,
}

impl Patterns {
    /// Compiles `patterns`; at least one, none empty, none with a `/` (they match file names).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        if patterns.is_empty() {
            return Err(PatternError {
                pattern: String::new(),
                reason: "at least one pattern is needed",
            });
        }
        let mut compiled = Vec::new();
        for p in patterns {
            let p = p.as_ref();
            let reason = if p.is_empty() {
                Some("empty")
            } else if p.contains('/') {
                Some("patterns match file names, so they cannot contain '/'")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(PatternError {
                    pattern: p.to_string(),
                    reason,
                });
            }
            compiled.push(fold(p));
        }
        Ok(Self {
            patterns: compiled,
            sources: patterns.iter().map(|p| p.as_ref().to_string()).collect(),
        })
    }

    /// The patterns as given.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// Whether `file_name` matches any of the patterns.
    pub fn matches(&self, file_name: &str) -> bool {
        let name = fold(file_name);
        self.patterns.iter().any(|p| glob(p, &name))
    }
}

/// Lower-cases for comparison.
fn fold(s: &str) -> Vec<char> {
    s.chars().flat_map(char::to_lowercase).collect()
}

/// Glob matching with one backtracking point (the last `*`): linear in practice.
fn glob(pattern: &[char], name: &[char]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == '?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_shell_globs_ignoring_case() {
        let p = Patterns::new(&["*.jpg", "*.jpeg", "img_??.png"]).unwrap();
        for yes in [
            "a.jpg",
            "X.JPG",
            "r_1_100.Jpeg",
            ".jpg",
            "a.b.jpg",
            "IMG_01.PNG",
            "été.JPG",
        ] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in [
            "a.jpgx",
            "a.png",
            "jpg",
            "img_1.png",
            "img_001.png",
            "a.jpg.txt",
            "",
        ] {
            assert!(!p.matches(no), "{no}");
        }
        let any = Patterns::new(&["*"]).unwrap();
        assert!(any.matches("") && any.matches("whatever"));
        let mid = Patterns::new(&["a*b*c"]).unwrap();
        assert!(mid.matches("abc") && mid.matches("aXbYbZc") && !mid.matches("acb"));
    }

    #[test]
    fn rejects_unusable_patterns() {
        assert!(Patterns::new::<&str>(&[]).is_err());
        assert!(Patterns::new(&[""]).is_err());
        let e = Patterns::new(&["Training/*.jpg"]).unwrap_err();
        assert!(e.to_string().contains("Training/*.jpg"));
    }
}
