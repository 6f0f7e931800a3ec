//! Alertmanager matcher syntax: `name="value"`, `name!="value"`, `name=~"regex"`, `name!~"regex"`.
//!
//! The config says which alerts mean "fail over" with the same matchers an SRE already writes in
//! Alertmanager routes and silences, so nothing new has to be learnt at 3 a.m. Semantics follow
//! Alertmanager: a missing label is the empty string, and regexes are anchored at both ends.
//! Parsing is pure and strict: a bad matcher is refused at start-up, never at alert time.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;

/// How a matcher compares a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// One parsed matcher. Regex matchers carry their compiled, anchored regex.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

/// Why a matcher string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    #[error("empty matcher")]
    Empty,
    #[error("invalid label name {0:?} (want [a-zA-Z_][a-zA-Z0-9_]*)")]
    BadLabelName(String),
    #[error("missing operator after label name (want =, !=, =~ or !~)")]
    MissingOperator,
    #[error("unterminated quoted value")]
    Unterminated,
    #[error("unexpected text after quoted value: {0:?}")]
    TrailingText(String),
    #[error("invalid escape sequence \\{0}")]
    BadEscape(char),
    #[error("invalid regex {value:?}: {reason}")]
    BadRegex { value: String, reason: String },
}

impl Matcher {
    /// Parses one matcher, e.g. `alertname="onprem_down"` or `severity=~"critical|page"`.
    /// Unquoted values are accepted as Alertmanager accepts them (`service=onprem-api`).
    pub fn parse(input: &str) -> Result<Self, MatcherError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(MatcherError::Empty);
        }
        // The name runs up to the operator (or white space before it).
        let name_end = s
            .find(|c: char| matches!(c, '=' | '!' | '~') || c.is_whitespace())
            .unwrap_or(s.len());
        let name = &s[..name_end];
        if !valid_label_name(name) {
            return Err(MatcherError::BadLabelName(name.to_string()));
        }
        let rest = s[name_end..].trim_start();
        let (op, rest) = if let Some(r) = rest.strip_prefix("=~") {
            (MatchOp::Regex, r)
        } else if let Some(r) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, r)
        } else if let Some(r) = rest.strip_prefix("!=") {
            (MatchOp::NotEqual, r)
        } else if let Some(r) = rest.strip_prefix('=') {
            (MatchOp::Equal, r)
        } else {
            return Err(MatcherError::MissingOperator);
        };
        let value = parse_value(rest.trim())?;
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                Regex::new(&format!("^(?:{value})$")).map_err(|e| MatcherError::BadRegex {
                    value: value.clone(),
                    reason: e.to_string(),
                })?,
            ),
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value,
            regex,
        })
    }

    /// True when the label set satisfies this matcher (a missing label counts as "").
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map_or("", String::as_str);
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => v == self.value,
            (MatchOp::NotEqual, _) => v != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(v),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(v),
            // parse() always compiles a regex for the regex operators.
            (MatchOp::Regex | MatchOp::NotRegex, None) => false,
        }
    }
}

/// True when every matcher matches. An empty list matches nothing: a service with no
/// `failback_on` must never fail back because of an unrelated alert.
pub fn matches_all(matchers: &[Matcher], labels: &BTreeMap<String, String>) -> bool {
    !matchers.is_empty() && matchers.iter().all(|m| m.matches(labels))
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.as_str(), self.value)
    }
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<String, MatcherError> {
    let Some(body) = s.strip_prefix('"') else {
        return Ok(s.to_string());
    };
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let trailing = body[i + 1..].trim();
                if !trailing.is_empty() {
                    return Err(MatcherError::TrailingText(trailing.to_string()));
                }
                return Ok(out);
            }
            '\\' => match chars.next() {
                Some((_, '"')) => out.push('"'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, 'n')) => out.push('\n'),
                Some((_, other)) => return Err(MatcherError::BadEscape(other)),
                None => return Err(MatcherError::Unterminated),
            },
            c => out.push(c),
        }
    }
    Err(MatcherError::Unterminated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parse_table() {
        let ok: &[(&str, &str, MatchOp, &str)] = &[
            (
                r#"alertname="onprem_down""#,
                "alertname",
                MatchOp::Equal,
                "onprem_down",
            ),
            (r#"  service = "a b"  "#, "service", MatchOp::Equal, "a b"),
            (r#"sev!="info""#, "sev", MatchOp::NotEqual, "info"),
            (r#"sev=~"crit.*""#, "sev", MatchOp::Regex, "crit.*"),
            (r#"sev!~"warn|info""#, "sev", MatchOp::NotRegex, "warn|info"),
            (
                "service=onprem-api",
                "service",
                MatchOp::Equal,
                "onprem-api",
            ),
            (r#"x="a\"b\\c\n""#, "x", MatchOp::Equal, "a\"b\\c\n"),
            (r#"x="""#, "x", MatchOp::Equal, ""),
            (r#"_x9="ü""#, "_x9", MatchOp::Equal, "ü"),
        ];
        for (input, name, op, value) in ok {
            let m = Matcher::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (m.name.as_str(), m.op, m.value.as_str()),
                (*name, *op, *value),
                "{input}"
            );
        }
        let bad: &[(&str, MatcherError)] = &[
            ("", MatcherError::Empty),
            ("   ", MatcherError::Empty),
            (r#"9x="a""#, MatcherError::BadLabelName("9x".into())),
            (r#"a-b="a""#, MatcherError::BadLabelName("a-b".into())),
            ("alertname", MatcherError::MissingOperator),
            (r#"alertname~"a""#, MatcherError::MissingOperator),
            (r#"a="unterminated"#, MatcherError::Unterminated),
            (r#"a="x" b"#, MatcherError::TrailingText("b".into())),
            (r#"a="\t""#, MatcherError::BadEscape('t')),
        ];
        for (input, want) in bad {
            assert_eq!(
                Matcher::parse(input).err().as_ref(),
                Some(want),
                "{input:?}"
            );
        }
        assert!(matches!(
            Matcher::parse(r#"a=~"(""#),
            Err(MatcherError::BadRegex { .. })
        ));
    }

    #[test]
    fn match_table() {
        let l = labels(&[("alertname", "onprem_down"), ("service", "onprem-api")]);
        let cases: &[(&str, bool)] = &[
            (r#"alertname="onprem_down""#, true),
            (r#"alertname="onprem""#, false),
            (r#"alertname!="onprem""#, true),
            (r#"alertname!="onprem_down""#, false),
            // Anchored: a partial match is no match.
            (r#"alertname=~"onprem""#, false),
            (r#"alertname=~"onprem_.*""#, true),
            (r#"alertname!~"onprem""#, true),
            (r#"alertname!~"onprem_(down|up)""#, false),
            // A missing label is "".
            (r#"missing="""#, true),
            (r#"missing!="""#, false),
            (r#"missing=~".*""#, true),
            (r#"missing=~".+""#, false),
            (r#"service!="""#, true),
        ];
        for (input, want) in cases {
            let m = Matcher::parse(input).expect(input);
            assert_eq!(m.matches(&l), *want, "{input}");
        }
    }

    #[test]
    fn matches_all_needs_every_matcher_and_at_least_one() {
        let l = labels(&[("alertname", "onprem_down"), ("service", "onprem-api")]);
        let ms: Vec<Matcher> = [r#"alertname="onprem_down""#, r#"service="onprem-api""#]
            .iter()
            .map(|s| Matcher::parse(s).expect(s))
            .collect();
        assert!(matches_all(&ms, &l));
        let other = labels(&[("alertname", "onprem_down"), ("service", "other")]);
        assert!(!matches_all(&ms, &other));
        assert!(!matches_all(&[], &l));
    }

    #[test]
    fn display_round_trips() {
        for s in [r#"a="b\"c""#, r#"a!~"x|y""#] {
            let m = Matcher::parse(s).expect(s);
            let again = Matcher::parse(&m.to_string()).expect("display output parses");
            assert_eq!((m.name, m.op, m.value), (again.name, again.op, again.value));
        }
    }
}
