//! Procfile parsing: the app's own list of process types and commands.
//!
//! A Procfile is the Heroku format, one process per line:
//!
//! ```text
//! # comments and blank lines are ignored
//! web: python app.py
//! worker: python worker.py
//! release: python manage.py migrate
//! ```
//!
//! This module owns the grammar and nothing else: it depends only on
//! [`crate::names`], and it never runs a command. The commands stay strings;
//! whoever runs them hands them to the app's own shell, as Heroku does.
//!
//! `release` is special: it is a one-off run before a release goes live, not
//! a long-running process, so [`Procfile::web_and_workers`] leaves it out and
//! [`Procfile::release_command`] returns it.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::names::{InvalidName, ProcessType};

/// The process type Heroku reserves for the one-off release phase.
const RELEASE: &str = "release";

/// Why a Procfile was refused. Every message names the offending line, so a
/// pusher can fix it without guessing; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcfileError {
    #[error("Procfile line {line}: expected `TYPE: command`")]
    Malformed { line: usize },
    // `InvalidName` is a leaf message written for users, so it is part of
    // this one line rather than a separate `source` a caller might not print.
    #[error("Procfile line {line}: {reason}")]
    InvalidType { line: usize, reason: InvalidName },
    #[error("Procfile line {line}: process type `{process}` is already defined on line {first}")]
    Duplicate {
        line: usize,
        first: usize,
        process: ProcessType,
    },
    #[error("Procfile line {line}: process type `{process}` names the same process as line {first} ('_' and '-' are the same in container names)")]
    SameLabel {
        line: usize,
        first: usize,
        process: ProcessType,
    },
    #[error("Procfile line {line}: process type `{process}` has an empty command")]
    EmptyCommand { line: usize, process: ProcessType },
}

/// A parsed, valid Procfile: unique, valid process types with non-empty
/// commands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Procfile {
    processes: BTreeMap<ProcessType, String>,
}

impl Procfile {
    /// Parses Procfile text. CRLF line ends and a leading UTF-8 BOM are
    /// accepted, since Procfiles written on Windows carry both.
    pub fn parse(text: &str) -> Result<Procfile, ProcfileError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut processes = BTreeMap::new();
        // Where each type was first seen, only to name it in the duplicate error.
        let mut first_seen: BTreeMap<ProcessType, usize> = BTreeMap::new();
        // Types that name the same thing once mapped to a DNS label
        // (`big_job` and `big-job`): containers and Kubernetes objects
        // would collide, so the second is a duplicate.
        let mut labels: BTreeMap<String, (usize, ProcessType)> = BTreeMap::new();

        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            let content = raw.strip_suffix('\r').unwrap_or(raw).trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let (name, command) = content
                .split_once(':')
                .ok_or(ProcfileError::Malformed { line })?;
            let name = name.trim();
            if name.is_empty() {
                return Err(ProcfileError::Malformed { line });
            }
            let process = ProcessType::parse(name)
                .map_err(|reason| ProcfileError::InvalidType { line, reason })?;
            let command = command.trim();
            if command.is_empty() {
                return Err(ProcfileError::EmptyCommand { line, process });
            }
            if let Some(&first) = first_seen.get(&process) {
                return Err(ProcfileError::Duplicate {
                    line,
                    first,
                    process,
                });
            }
            if let Some((first, _)) = labels.get(&process.dns_label()) {
                return Err(ProcfileError::SameLabel {
                    line,
                    first: *first,
                    process,
                });
            }
            labels.insert(process.dns_label(), (line, process.clone()));
            first_seen.insert(process.clone(), line);
            processes.insert(process, command.to_owned());
        }
        Ok(Procfile { processes })
    }

    /// Every entry as written, `release` included.
    pub fn processes(&self) -> &BTreeMap<ProcessType, String> {
        &self.processes
    }

    /// The command for one process type, `release` included.
    pub fn get(&self, process: &ProcessType) -> Option<&str> {
        self.processes.get(process).map(String::as_str)
    }

    /// The `release:` command, run once before a release goes live.
    pub fn release_command(&self) -> Option<&str> {
        self.processes
            .iter()
            .find(|(process, _)| process.as_str() == RELEASE)
            .map(|(_, command)| command.as_str())
    }

    /// The long-running processes, the ones a formation scales: every entry
    /// but `release`, in process type order.
    pub fn web_and_workers(&self) -> impl Iterator<Item = (&ProcessType, &str)> + '_ {
        self.processes
            .iter()
            .filter(|(process, _)| process.as_str() != RELEASE)
            .map(|(process, command)| (process, command.as_str()))
    }

    /// Whether the Procfile lists no process at all.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }
}

impl FromStr for Procfile {
    type Err = ProcfileError;

    fn from_str(text: &str) -> Result<Procfile, ProcfileError> {
        Procfile::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(name: &str) -> ProcessType {
        ProcessType::parse(name).expect("test process types are valid")
    }

    #[test]
    fn parses_types_and_commands() {
        let p = Procfile::parse(
            "web: gunicorn app:app --bind 0.0.0.0:$PORT\nworker:python worker.py\n",
        )
        .unwrap();
        assert_eq!(
            p.get(&ProcessType::web()),
            Some("gunicorn app:app --bind 0.0.0.0:$PORT"),
            "only the first colon separates the type"
        );
        assert_eq!(p.get(&pt("worker")), Some("python worker.py"));
        assert_eq!(p.processes().len(), 2);
        assert_eq!(p.release_command(), None);
    }

    #[test]
    fn skips_blank_lines_and_comments() {
        let p =
            Procfile::parse("\n# a comment\n   \n  # indented comment\nweb: ./run\n\n").unwrap();
        assert_eq!(p.processes().len(), 1);
        assert_eq!(p.get(&ProcessType::web()), Some("./run"));
    }

    #[test]
    fn accepts_crlf_and_bom() {
        let p = Procfile::parse("\u{feff}web: ./run --flag\r\nworker: ./work\r\n").unwrap();
        assert_eq!(p.get(&ProcessType::web()), Some("./run --flag"));
        assert_eq!(p.get(&pt("worker")), Some("./work"));
    }

    #[test]
    fn empty_text_is_an_empty_procfile() {
        assert!(Procfile::parse("").unwrap().is_empty());
        assert!(Procfile::parse("# nothing\n").unwrap().is_empty());
    }

    #[test]
    fn malformed_line_names_its_number() {
        let err = Procfile::parse("web: ./run\n\npython app.py\n").unwrap_err();
        assert_eq!(err, ProcfileError::Malformed { line: 3 });
        assert_eq!(err.to_string(), "Procfile line 3: expected `TYPE: command`");
        assert_eq!(
            Procfile::parse(": ./run").unwrap_err(),
            ProcfileError::Malformed { line: 1 }
        );
    }

    #[test]
    fn invalid_type_is_refused() {
        for (text, name) in [
            ("Web: ./run", "Web"),
            ("my app: ./run", "my app"),
            ("1x: ./run", "1x"),
            ("a;b: ./run", "a;b"),
        ] {
            let err = Procfile::parse(&format!("# header\n{text}")).unwrap_err();
            assert!(
                matches!(&err, ProcfileError::InvalidType { line: 2, .. }),
                "{text:?}: {err:?}"
            );
            let message = err.to_string();
            assert!(
                message.starts_with("Procfile line 2: invalid process type")
                    && message.contains(name),
                "{message}"
            );
        }
    }

    #[test]
    fn duplicate_type_is_refused() {
        let err = Procfile::parse("web: a\nworker: b\nweb: c\n").unwrap_err();
        assert_eq!(
            err,
            ProcfileError::Duplicate {
                line: 3,
                first: 1,
                process: ProcessType::web()
            }
        );
        assert_eq!(
            err.to_string(),
            "Procfile line 3: process type `web` is already defined on line 1"
        );
    }

    #[test]
    fn empty_command_is_refused() {
        for text in ["web:", "web:   ", "web:\r\n"] {
            assert_eq!(
                Procfile::parse(text).unwrap_err(),
                ProcfileError::EmptyCommand {
                    line: 1,
                    process: ProcessType::web()
                },
                "{text:?}"
            );
        }
    }

    #[test]
    fn release_is_kept_out_of_the_formation() {
        let p = Procfile::parse("release: ./migrate\nweb: ./serve\nworker: ./work\n").unwrap();
        assert_eq!(p.release_command(), Some("./migrate"));
        assert_eq!(p.get(&pt("release")), Some("./migrate"));
        let formation: Vec<_> = p
            .web_and_workers()
            .map(|(process, command)| (process.as_str(), command))
            .collect();
        assert_eq!(formation, [("web", "./serve"), ("worker", "./work")]);
    }

    #[test]
    fn from_str_parses() {
        let p: Procfile = "web: ./serve".parse().unwrap();
        assert_eq!(p.get(&ProcessType::web()), Some("./serve"));
    }

    #[test]
    fn types_that_map_to_one_label_are_refused() {
        let e = Procfile::parse("big_job: a\nbig-job: b\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Procfile line 2: process type `big-job` names the same process as line 1 ('_' and '-' are the same in container names)"
        );
    }
}
