//! Alertmanager matcher syntax: `name="value"`, `name!="value"`, `name=~"regex"`, `name!~"regex"`.
//!
//! The config says which alerts mean "fail over" with the same matchers an SRE already writes in
//! Alertmanager routes and silences, so nothing new has to be learnt at 3 a.m. Semantics follow
//! Alertmanager: a missing label is the empty string, and regexes are anchored at both ends.
//! Parsing is pure and strict: a bad matcher is refused at start-up, never at alert time.
//!
//! Label names follow Alertmanager 0.27+'s UTF-8 matcher grammar (`matcher/parse`), so any
//! matcher Alertmanager itself accepts for a name is accepted here too:
//!
//! - A double-quoted name may hold any UTF-8 text: `"service.name"="onprem-api"`,
//!   `"статус"="down"`. It takes the same escapes as a quoted value (`\"`, `\\`, `\n`); any
//!   other escape is refused (Alertmanager also takes Go escapes such as `\t`: refusing them at
//!   start-up is safer than reading them differently). An empty quoted name `""` is refused, as
//!   Alertmanager refuses an empty label name.
//! - An unquoted name is a run of any characters except white space and the characters the
//!   grammar reserves, `{ } ! = ~ , \ " '` and the backtick. This keeps the classic names
//!   (`[a-zA-Z_:][a-zA-Z0-9_:]*`) and also accepts what Alertmanager's UTF-8 parser accepts
//!   unquoted, e.g. `service.name=onprem-api` or `name-with-dashes="x"`: where the name ends is
//!   never ambiguous, since it stops at the first reserved character. A name with a reserved
//!   character must be quoted, and the error says which character.
//!
//! [`Matcher`]'s `Display` prints a name unquoted when it can be read back unquoted and quoted
//! otherwise, and always quotes the value, so its output parses back to the same matcher.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

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
    #[error("braces are not allowed around a single matcher (write one matcher per list entry, e.g. name=\"value\")")]
    Braces,
    #[error("missing label name before the operator")]
    MissingLabelName,
    #[error("empty label name \"\" (a label name needs at least one character)")]
    EmptyLabelName,
    #[error("unterminated quoted label name (missing closing \")")]
    UnterminatedLabelName,
    #[error("invalid label name {name:?}: {found:?} is not allowed in an unquoted label name (double-quote the name to use it)")]
    BadLabelName { name: String, found: char },
    #[error("missing operator after label name (want =, !=, =~ or !~)")]
    MissingOperator,
    #[error("unterminated quoted value")]
    Unterminated,
    #[error("unquoted value {0:?} contains a double quote (quote the whole value, escaping it as \\\" if it belongs)")]
    UnescapedQuote(String),
    #[error("unexpected text after quoted value: {0:?}")]
    TrailingText(String),
    #[error("invalid escape sequence \\{0}")]
    BadEscape(char),
    #[error("invalid regex {value:?}: {reason}")]
    BadRegex { value: String, reason: String },
}

impl Matcher {
    /// Parses one matcher, e.g. `alertname="onprem_down"`, `severity=~"critical|page"` or
    /// `"service.name"="onprem-api"`. Unquoted values are accepted as Alertmanager accepts them
    /// (`service=onprem-api`).
    pub fn parse(input: &str) -> Result<Self, MatcherError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(MatcherError::Empty);
        }
        // `{a="b"}` is a list of matchers in Alertmanager's syntax; here each list entry is one
        // matcher, so say that rather than call `{a` a bad label name.
        if s.starts_with('{') {
            return Err(MatcherError::Braces);
        }
        let (name, rest) = parse_name(s)?;
        let rest = rest.trim_start();
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
            name,
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
        // Unquoted when the name reads back unquoted, so classic names print as they always
        // did (and as Alertmanager prints them); quoted otherwise, so the output round-trips.
        if !self.name.is_empty() && !self.name.contains(is_reserved) {
            f.write_str(&self.name)?;
        } else {
            write_quoted(f, &self.name)?;
        }
        f.write_str(self.op.as_str())?;
        write_quoted(f, &self.value)
    }
}

/// Characters that end an unquoted label name: white space and the characters Alertmanager's
/// UTF-8 matcher lexer reserves.
fn is_reserved(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '{' | '}' | '!' | '=' | '~' | ',' | '\\' | '"' | '\'' | '`'
        )
}

/// Reads the label name at the start of `s` (trimmed, not empty); returns it and the text after.
fn parse_name(s: &str) -> Result<(String, &str), MatcherError> {
    if let Some(body) = s.strip_prefix('"') {
        let (name, rest) = unquote(body).map_err(|e| match e {
            MatcherError::Unterminated => MatcherError::UnterminatedLabelName,
            other => other,
        })?;
        if name.is_empty() {
            return Err(MatcherError::EmptyLabelName);
        }
        return Ok((name, rest));
    }
    let end = s.find(is_reserved).unwrap_or(s.len());
    let (name, rest) = s.split_at(end);
    match rest.chars().next() {
        // Where an operator may start: the operator check that follows reports a bad one
        // (`alertname~"a"`), so a well-formed name is not blamed for it.
        None | Some('=' | '!' | '~') if name.is_empty() => Err(MatcherError::MissingLabelName),
        None | Some('=' | '!' | '~') => Ok((name.to_string(), rest)),
        Some(c) if c.is_whitespace() => Ok((name.to_string(), rest)),
        // A reserved character inside what was meant as the name (`a'b="x"`): show the
        // whole intended name, up to the operator or white space, and the offending character.
        Some(found) => {
            let intended_end = s
                .find(|c: char| matches!(c, '=' | '!' | '~') || c.is_whitespace())
                .unwrap_or(s.len());
            Err(MatcherError::BadLabelName {
                name: s[..intended_end].to_string(),
                found,
            })
        }
    }
}

fn parse_value(s: &str) -> Result<String, MatcherError> {
    let Some(body) = s.strip_prefix('"') else {
        // Alertmanager refuses it too; accepted, `alertname=onprem_down"` would match nothing.
        if s.contains('"') {
            return Err(MatcherError::UnescapedQuote(s.to_string()));
        }
        return Ok(s.to_string());
    };
    let (value, rest) = unquote(body)?;
    let trailing = rest.trim();
    if !trailing.is_empty() {
        return Err(MatcherError::TrailingText(trailing.to_string()));
    }
    Ok(value)
}

/// Reads a double-quoted string whose opening quote is already stripped, undoing the escapes
/// `\"`, `\\` and `\n`; returns it and the text after the closing quote.
fn unquote(body: &str) -> Result<(String, &str), MatcherError> {
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &body[i + 1..])),
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

/// Writes `s` double-quoted with exactly the escapes [`unquote`] undoes, so any string
/// round-trips (Rust's `{:?}` would write `\t` or `\u{..}`, which the parser refuses).
fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
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
        check_ok(ok);
        let bad: &[(&str, MatcherError)] = &[
            ("", MatcherError::Empty),
            ("   ", MatcherError::Empty),
            ("alertname", MatcherError::MissingOperator),
            (r#"alertname~"a""#, MatcherError::MissingOperator),
            (r#"a="unterminated"#, MatcherError::Unterminated),
            (r#"a="x" b"#, MatcherError::TrailingText("b".into())),
            (r#"a="\t""#, MatcherError::BadEscape('t')),
        ];
        check_bad(bad);
        assert!(matches!(
            Matcher::parse(r#"a=~"(""#),
            Err(MatcherError::BadRegex { .. })
        ));
    }

    /// Label names, modelled on Alertmanager's own tests (`matcher/parse/parse_test.go`,
    /// `lexer_test.go`, `pkg/labels/parse_test.go` and `matcher/compliance`).
    #[test]
    fn label_name_table() {
        let ok: &[(&str, &str, MatchOp, &str)] = &[
            // Quoted UTF-8 names.
            (
                r#""service.name"="onprem-api""#,
                "service.name",
                MatchOp::Equal,
                "onprem-api",
            ),
            (r#""foo"="bar""#, "foo", MatchOp::Equal, "bar"),
            (r#""foo"!="bar""#, "foo", MatchOp::NotEqual, "bar"),
            (r#""foo"=~"[a-z]+""#, "foo", MatchOp::Regex, "[a-z]+"),
            (r#""foo"!~"[a-z]+""#, "foo", MatchOp::NotRegex, "[a-z]+"),
            (r#""hello world"="x""#, "hello world", MatchOp::Equal, "x"),
            (r#""статус"="упал""#, "статус", MatchOp::Equal, "упал"),
            (r#""🙂"="🙂bar""#, "🙂", MatchOp::Equal, "🙂bar"),
            (r#""a\"b"="x""#, "a\"b", MatchOp::Equal, "x"),
            (r#""a\\b"="x""#, "a\\b", MatchOp::Equal, "x"),
            (r#""a\nb"="x""#, "a\nb", MatchOp::Equal, "x"),
            (r#""a=b"="x""#, "a=b", MatchOp::Equal, "x"),
            (r#""{x,y}"="z""#, "{x,y}", MatchOp::Equal, "z"),
            (r#"  "a.b"  !=  "c"  "#, "a.b", MatchOp::NotEqual, "c"),
            (r#""a.b"=c"#, "a.b", MatchOp::Equal, "c"),
            // Classic names, `[a-zA-Z_:][a-zA-Z0-9_:]*`, colon included.
            ("hello:world=x", "hello:world", MatchOp::Equal, "x"),
            (":x=y", ":x", MatchOp::Equal, "y"),
            ("hello0123456789=x", "hello0123456789", MatchOp::Equal, "x"),
            // Unquoted names the UTF-8 parser accepts beyond the classic ones.
            (
                "service.name=onprem-api",
                "service.name",
                MatchOp::Equal,
                "onprem-api",
            ),
            (
                r#"name-with-dashes = "bar""#,
                "name-with-dashes",
                MatchOp::Equal,
                "bar",
            ),
            (r#"9x="a""#, "9x", MatchOp::Equal, "a"),
            ("статус=down", "статус", MatchOp::Equal, "down"),
            ("hello🙂Σ=x", "hello🙂Σ", MatchOp::Equal, "x"),
            ("$=x", "$", MatchOp::Equal, "x"),
        ];
        check_ok(ok);
        let bad: &[(&str, MatcherError)] = &[
            (r#"""="x""#, MatcherError::EmptyLabelName),
            (r#"""!~".*""#, MatcherError::EmptyLabelName),
            (
                r#""service.name=onprem-api"#,
                MatcherError::UnterminatedLabelName,
            ),
            (r#""a\"=x"#, MatcherError::UnterminatedLabelName),
            (r#""a\"#, MatcherError::UnterminatedLabelName),
            (r#""a\tb"="x""#, MatcherError::BadEscape('t')),
            (r#""a"b="x""#, MatcherError::MissingOperator),
            (r#""a""#, MatcherError::MissingOperator),
            (r#"="x""#, MatcherError::MissingLabelName),
            (r#"!~"x""#, MatcherError::MissingLabelName),
            (r#"{foo="bar"}"#, MatcherError::Braces),
            (
                r#"a'b="x""#,
                MatcherError::BadLabelName {
                    name: "a'b".into(),
                    found: '\'',
                },
            ),
            (
                "'foo'=bar",
                MatcherError::BadLabelName {
                    name: "'foo'".into(),
                    found: '\'',
                },
            ),
            (
                r#"a,b="x""#,
                MatcherError::BadLabelName {
                    name: "a,b".into(),
                    found: ',',
                },
            ),
            (
                r#"a\nb="x""#,
                MatcherError::BadLabelName {
                    name: r"a\nb".into(),
                    found: '\\',
                },
            ),
            (
                r#"alertname=onprem_down""#,
                MatcherError::UnescapedQuote(r#"onprem_down""#.into()),
            ),
            (
                r#"fo"o"="x""#,
                MatcherError::BadLabelName {
                    name: r#"fo"o""#.into(),
                    found: '"',
                },
            ),
            (
                "a`b=x",
                MatcherError::BadLabelName {
                    name: "a`b".into(),
                    found: '`',
                },
            ),
            (
                "a}=x",
                MatcherError::BadLabelName {
                    name: "a}".into(),
                    found: '}',
                },
            ),
            // White space ends an unquoted name, as in Alertmanager: what follows is no operator.
            (r#"alert name="x""#, MatcherError::MissingOperator),
        ];
        check_bad(bad);
        // The message names the problem, not just "invalid".
        for (input, want) in [
            (r#"""="x""#, "empty label name"),
            (r#""service.name=x"#, "unterminated quoted label name"),
            (
                r#"a'b="x""#,
                r#"invalid label name "a'b": '\'' is not allowed in an unquoted label name"#,
            ),
            (r#"{a="b"}"#, "braces are not allowed"),
            (r#"="x""#, "missing label name"),
        ] {
            let err = Matcher::parse(input).expect_err(input).to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    #[track_caller]
    fn check_ok(cases: &[(&str, &str, MatchOp, &str)]) {
        for (input, name, op, value) in cases {
            let m = Matcher::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (m.name.as_str(), m.op, m.value.as_str()),
                (*name, *op, *value),
                "{input}"
            );
        }
    }

    #[track_caller]
    fn check_bad(cases: &[(&str, MatcherError)]) {
        for (input, want) in cases {
            assert_eq!(
                Matcher::parse(input).err().as_ref(),
                Some(want),
                "{input:?}"
            );
        }
    }

    #[test]
    fn quoted_utf8_names_match_their_labels() {
        let l = labels(&[("service.name", "onprem-api"), ("статус", "упал")]);
        for (input, want) in [
            (r#""service.name"="onprem-api""#, true),
            ("service.name=onprem-api", true),
            (r#""service.name"!="onprem-api""#, false),
            (r#""service.name"=~"onprem-.*""#, true),
            (r#""service.name"="other""#, false),
            (r#""статус"="упал""#, true),
            // `service.name` is one label, not `service` with something after it.
            (r#"service="onprem-api""#, false),
            (r#""service name"="""#, true),
        ] {
            let m = Matcher::parse(input).expect(input);
            assert_eq!(m.matches(&l), want, "{input}");
        }
        let ms: Vec<Matcher> = [r#""service.name"="onprem-api""#, r#""статус"=~"упал|down""#]
            .iter()
            .map(|s| Matcher::parse(s).expect(s))
            .collect();
        assert!(matches_all(&ms, &l));
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
        for (s, shown) in [
            (r#"a="b\"c""#, r#"a="b\"c""#),
            (r#"a!~"x|y""#, r#"a!~"x|y""#),
            ("service=onprem-api", r#"service="onprem-api""#),
            // A name that reads back unquoted stays unquoted, as Alertmanager prints it.
            (
                r#""service.name"="onprem-api""#,
                r#"service.name="onprem-api""#,
            ),
            // Names with white space or reserved characters need their quotes back.
            (r#""a b"="c""#, r#""a b"="c""#),
            (r#""a\"b"=~"c""#, r#""a\"b"=~"c""#),
            (r#""a=b"!="c""#, r#""a=b"!="c""#),
            (r#""{x}"="c""#, r#""{x}"="c""#),
            (r#""a\nb"="c""#, r#""a\nb"="c""#),
            (r#""статус"="упал""#, r#"статус="упал""#),
            // Values only get the escapes the parser undoes: a tab or a combining accent is
            // written as itself, not as Rust's `\t` or `\u{301}`.
            ("a=\"x\ty\"", "a=\"x\ty\""),
            ("a=\"e\u{301}\"", "a=\"e\u{301}\""),
            (r#"a="\\\n""#, r#"a="\\\n""#),
        ] {
            let m = Matcher::parse(s).expect(s);
            assert_eq!(m.to_string(), shown, "{s}");
            let again = Matcher::parse(&m.to_string()).expect("display output parses");
            assert_eq!(
                (&m.name, m.op, &m.value),
                (&again.name, again.op, &again.value),
                "{s}"
            );
        }
    }
}
