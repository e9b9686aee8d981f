//! `.dockerignore`: which files of a Dockerfile app's tree stay out of the
//! build context, with Docker's own rules:
//!
//! - one pattern per line; `#` starts a comment; blank lines are skipped;
//! - patterns are globs over `/`-separated paths relative to the root
//!   (`*`, `?`, `[...]`, and `**` for any number of directories); a leading
//!   `/` is ignored;
//! - a pattern that matches a directory excludes everything under it;
//! - `!pattern` brings matching paths back; the last matching line wins;
//! - the `Dockerfile` and `.dockerignore` are always sent (the engine needs
//!   them), as Docker's client does.

use globset::{GlobBuilder, GlobMatcher};

/// The parsed rules of one `.dockerignore`.
#[derive(Debug, Default)]
pub struct DockerIgnore {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    glob: GlobMatcher,
    /// `!pattern`: brings paths back rather than leaving them out.
    include: bool,
}

impl DockerIgnore {
    /// Parse the file's text. Lines that are not valid globs are skipped
    /// with the reason, so one typo does not fail the build.
    pub fn parse(text: &str) -> (DockerIgnore, Vec<String>) {
        let mut rules = Vec::new();
        let mut warnings = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (include, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
            if pattern.is_empty() {
                continue;
            }
            match GlobBuilder::new(pattern).literal_separator(true).build() {
                Ok(g) => rules.push(Rule {
                    glob: g.compile_matcher(),
                    include,
                }),
                Err(e) => warnings.push(format!(".dockerignore line {}: {e}", n + 1)),
            }
        }
        (DockerIgnore { rules }, warnings)
    }

    /// Whether `path` (relative, `/`-separated) stays out of the context.
    pub fn excludes(&self, path: &str) -> bool {
        if path == "Dockerfile" || path == ".dockerignore" {
            return false;
        }
        let mut excluded = false;
        for rule in &self.rules {
            // A rule applies to the path itself or to any directory above it.
            let applies = std::iter::successors(Some(path), |p| p.rsplit_once('/').map(|(d, _)| d))
                .any(|p| rule.glob.is_match(p));
            if applies {
                excluded = !rule.include;
            }
        }
        excluded
    }

    /// Whether a directory's contents need looking at one by one: it is
    /// excluded as a whole unless some `!` rule could bring a path back.
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.include)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> DockerIgnore {
        let (d, warnings) = DockerIgnore::parse(text);
        assert!(warnings.is_empty(), "{warnings:?}");
        d
    }

    #[test]
    fn docker_semantics() {
        let d = rules("# deps\nnode_modules\n*.log\n/tmp/\n**/*.pyc\ndocs/*.md\n!docs/KEEP.md\n");
        for out in [
            "node_modules",
            "node_modules/a/b.js",
            "x.log",
            "tmp/cache",
            "a/b/c.pyc",
            "c.pyc",
            "docs/a.md",
        ] {
            assert!(d.excludes(out), "{out} should be excluded");
        }
        for kept in [
            "src/x.log",    // `*` does not cross `/`
            "docs/KEEP.md", // the exception wins, being last
            "docs/sub/a.md",
            "app.py",
            "Dockerfile",
        ] {
            assert!(!d.excludes(kept), "{kept} should be kept");
        }
        assert!(d.has_exceptions());
    }

    #[test]
    fn the_dockerfile_is_always_sent() {
        let d = rules("*\n");
        assert!(d.excludes("app.py"));
        assert!(!d.excludes("Dockerfile"));
        assert!(!d.excludes(".dockerignore"));
    }

    #[test]
    fn last_match_wins() {
        let d = rules("!secret.txt\n*.txt\n");
        assert!(d.excludes("secret.txt"));
        let (_, warnings) = DockerIgnore::parse("[unclosed\nok\n");
        assert_eq!(warnings.len(), 1, "a bad line is reported, not fatal");
    }
}
