//! Text → AST for SCIM filters (RFC 7644 §3.4.2.2), attribute paths and PATCH paths (§3.5.2).
//!
//! The input is first split into tokens (strings are decoded as JSON strings here), then a small
//! recursive-descent parser builds the AST. Recursion only happens on `(`, `not (` and `[`, and
//! the nesting depth is checked *before* descending, so hostile input (thousands of `(`) ends in
//! an error after [`MAX_DEPTH`] frames. Knows nothing of schemas: whether `emails` is
//! multi-valued or `foo` exists at all is for the caller.

use serde_json::Number;

use super::{canonical_depth, AttrPath, CompValue, CompareOp, Filter, PatchPath};
use crate::scim::ScimError;

/// Longest filter or path accepted, in characters.
pub const MAX_FILTER_CHARS: usize = 8192;
/// Deepest nesting of `( … )`, `not ( … )` and `attr[ … ]` accepted.
pub const MAX_DEPTH: usize = 64;
/// Most attribute expressions (`attr op value`, `attr pr`) in one filter.
pub const MAX_COMPARISONS: usize = 256;

/// Echo the input back in error details only when it is short enough to read.
const ECHO_INPUT_MAX: usize = 120;

/// Parses a `filter=` expression into its AST.
///
/// Keywords and operators are case-insensitive, attribute names keep their case. As sugar
/// (not RFC grammar, but sent by Entra ID), `emails[type eq "work"].value eq "x"` is read as
/// `emails[type eq "work" and value eq "x"]`. Errors are `invalidFilter` with the position
/// (1-based character) and what was expected.
pub fn parse_filter(input: &str) -> Result<Filter, ScimError> {
    let fail = |e: PErr| ScimError::invalid_filter(e.render(input, "invalid filter"));
    check_length(input).map_err(fail)?;
    let toks = lex(input).map_err(fail)?;
    let mut p = Parser::new(input, toks);
    if p.toks.is_empty() {
        return Err(fail(PErr::new(0, "the filter is empty")));
    }
    let f = p.parse_or(false).map_err(fail)?;
    if let Some(t) = p.peek() {
        let msg = match t.tok {
            Tok::RParen => "unexpected ')' without a matching '('".to_string(),
            Tok::RBracket => "unexpected ']' without a matching '['".to_string(),
            _ => format!(
                "expected 'and', 'or' or the end of the filter, found {}",
                t.describe()
            ),
        };
        return Err(fail(PErr::new(t.start, msg)));
    }
    check_canonical(canonical_depth(&f), || f.to_string()).map_err(fail)?;
    Ok(f)
}

/// Parses a plain attribute path (`userName`, `name.givenName`,
/// `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value`), as used by
/// `sortBy`, `attributes` and `excludedAttributes`. Surrounding whitespace is ignored. Errors are
/// `invalidPath`; their detail quotes the path and says what is wrong.
///
/// A bare schema URN (`urn:…:enterprise:2.0:User`) parses as urn `urn:…:enterprise:2.0` with
/// attribute `User`; callers that accept whole-extension names check for that first.
pub fn parse_attr_path(input: &str) -> Result<AttrPath, ScimError> {
    let text = input.trim_matches(is_space);
    let fail = |msg: String| {
        ScimError::invalid_path(format!(
            "invalid attribute path {}: {msg}",
            quote_input(text)
        ))
    };
    if text.is_empty() {
        return Err(ScimError::invalid_path(
            "invalid attribute path: it is empty",
        ));
    }
    if text.chars().nth(MAX_FILTER_CHARS).is_some() {
        return Err(fail(format!("longer than {MAX_FILTER_CHARS} characters")));
    }
    if let Some((i, c)) = text
        .char_indices()
        .find(|&(_, c)| is_space(c) || is_delimiter(c))
    {
        let pos = text[..i].chars().count() + 1;
        return Err(fail(format!(
            "unexpected {} at position {pos} (an attribute path has no spaces, brackets or quotes)",
            describe_char(c)
        )));
    }
    parse_path_text(text).map_err(fail)
}

/// Parses a PATCH operation's `path`: `attrPath` or `valuePath [ "." subAttr ]`
/// (`members[value eq "2819c223"]`, `emails[type eq "work"].value`, `name.givenName`,
/// `urn:…:enterprise:2.0:User:manager`). Errors (including errors inside the value filter) are
/// `invalidPath`.
pub fn parse_patch_path(input: &str) -> Result<PatchPath, ScimError> {
    let fail = |e: PErr| ScimError::invalid_path(e.render(input, "invalid path"));
    check_length(input).map_err(fail)?;
    let toks = lex(input).map_err(fail)?;
    let mut p = Parser::new(input, toks);
    let path = p.parse_patch_path().map_err(fail)?;
    let depth = path
        .value_filter
        .as_ref()
        .map_or(0, |f| 1 + canonical_depth(f));
    check_canonical(depth, || path.to_string()).map_err(fail)?;
    Ok(path)
}

/// A parse error at a byte offset of the input; rendered with a character position.
#[derive(Debug)]
struct PErr {
    at: usize,
    msg: String,
}

impl PErr {
    fn new(at: usize, msg: impl Into<String>) -> Self {
        PErr {
            at,
            msg: msg.into(),
        }
    }

    fn render(&self, input: &str, what: &str) -> String {
        let at = floor_char_boundary(input, self.at);
        let pos = input[..at].chars().count() + 1;
        let echo = if input.chars().nth(ECHO_INPUT_MAX).is_none() {
            format!(" {}", quote_input(input))
        } else {
            String::new()
        };
        format!("{what}{echo} at position {pos}: {}", self.msg)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn quote_input(s: &str) -> String {
    format!("\"{}\"", super::display::escape_json(s))
}

fn check_length(input: &str) -> Result<(), PErr> {
    // `nth` stops counting at the limit, so a 100k-character input costs no more than 8k.
    if input.chars().nth(MAX_FILTER_CHARS).is_some() {
        let at = input
            .char_indices()
            .nth(MAX_FILTER_CHARS)
            .map_or(input.len(), |(i, _)| i);
        return Err(PErr::new(
            at,
            format!("longer than {MAX_FILTER_CHARS} characters"),
        ));
    }
    Ok(())
}

/// The limits also hold for the canonical text, so `parse(ast.to_string())` always succeeds.
/// (The canonical form can be deeper or longer than the input in corner cases: the
/// `emails[a or b].value eq "x"` sugar adds parentheses, `1e15` prints in full.)
fn check_canonical(depth: usize, text: impl FnOnce() -> String) -> Result<(), PErr> {
    if depth > MAX_DEPTH {
        return Err(PErr::new(
            0,
            format!("nested deeper than {MAX_DEPTH} levels once written in canonical form"),
        ));
    }
    if text().chars().nth(MAX_FILTER_CHARS).is_some() {
        return Err(PErr::new(
            0,
            format!("longer than {MAX_FILTER_CHARS} characters once written in canonical form"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    LParen,
    RParen,
    LBracket,
    RBracket,
    /// A JSON string literal, already decoded.
    Str(String),
    /// Anything else up to whitespace or a delimiter: a keyword, an attribute path, a number,
    /// `true`/`false`/`null`, or `.subAttr` right after `]`.
    Bare(&'a str),
}

#[derive(Debug)]
struct Token<'a> {
    tok: Tok<'a>,
    /// Byte offsets into the input.
    start: usize,
    end: usize,
}

impl Token<'_> {
    fn describe(&self) -> String {
        match &self.tok {
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::LBracket => "'['".into(),
            Tok::RBracket => "']'".into(),
            Tok::Str(_) => "a string".into(),
            Tok::Bare(w) => format!("'{}'", truncate(w)),
        }
    }
}

fn truncate(w: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = w.chars().take(MAX).collect();
    if w.chars().nth(MAX).is_some() {
        out.push('…');
    }
    super::display::escape_json(&out)
}

fn describe_char(c: char) -> String {
    match c {
        ' ' => "space".into(),
        '\t' => "tab".into(),
        '\r' | '\n' => "line break".into(),
        c => format!(
            "'{}'",
            super::display::escape_json(c.encode_utf8(&mut [0; 4]))
        ),
    }
}

/// SCIM separates tokens with SP; tabs and line breaks are tolerated.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_delimiter(c: char) -> bool {
    matches!(c, '(' | ')' | '[' | ']' | '"')
}

fn lex(input: &str) -> Result<Vec<Token<'_>>, PErr> {
    let mut toks = Vec::new();
    let mut it = input.char_indices().peekable();
    while let Some(&(start, c)) = it.peek() {
        let single = match c {
            c if is_space(c) => {
                it.next();
                continue;
            }
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            '[' => Some(Tok::LBracket),
            ']' => Some(Tok::RBracket),
            _ => None,
        };
        if let Some(tok) = single {
            it.next();
            toks.push(Token {
                tok,
                start,
                end: start + 1,
            });
            continue;
        }
        if c == '"' {
            let (s, end) = lex_string(input, start)?;
            // Skip what the string consumed.
            while it.peek().is_some_and(|&(i, _)| i < end) {
                it.next();
            }
            toks.push(Token {
                tok: Tok::Str(s),
                start,
                end,
            });
            continue;
        }
        let mut end = input.len();
        while let Some(&(i, c)) = it.peek() {
            if is_space(c) || is_delimiter(c) {
                end = i;
                break;
            }
            it.next();
        }
        toks.push(Token {
            tok: Tok::Bare(&input[start..end]),
            start,
            end,
        });
    }
    Ok(toks)
}

/// Decodes the JSON string starting at byte `start` (a `"`); returns it and the byte offset
/// just past the closing quote.
fn lex_string(input: &str, start: usize) -> Result<(String, usize), PErr> {
    let body = start + 1;
    let mut out = String::new();
    let mut it = input[body..].char_indices().map(|(i, c)| (i + body, c));
    let unterminated = || PErr::new(start, "unterminated string: the closing '\"' is missing");
    loop {
        let Some((i, c)) = it.next() else {
            return Err(unterminated());
        };
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => {
                let Some((_, e)) = it.next() else {
                    return Err(unterminated());
                };
                match e {
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    '/' => out.push('/'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'u' => {
                        let hi = hex4(&mut it, i)?;
                        let code = match hi {
                            0xD800..=0xDBFF => {
                                let low_missing = || {
                                    PErr::new(
                                        i,
                                        format!(
                                            "\\u{hi:04x} is a high surrogate that must be \
                                             followed by a low surrogate \\uDC00-\\uDFFF"
                                        ),
                                    )
                                };
                                match (it.next(), it.next()) {
                                    (Some((_, '\\')), Some((_, 'u'))) => {}
                                    _ => return Err(low_missing()),
                                }
                                let lo = hex4(&mut it, i)?;
                                if !(0xDC00..=0xDFFF).contains(&lo) {
                                    return Err(low_missing());
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            }
                            0xDC00..=0xDFFF => {
                                return Err(PErr::new(
                                    i,
                                    format!("\\u{hi:04x} is a low surrogate without a high one"),
                                ))
                            }
                            c => c,
                        };
                        match char::from_u32(code) {
                            Some(c) => out.push(c),
                            None => return Err(PErr::new(i, "invalid \\u escape")),
                        }
                    }
                    other => {
                        return Err(PErr::new(
                            i,
                            format!(
                                "invalid escape '\\{}' in string (allowed: \\\" \\\\ \\/ \\b \\f \
                                 \\n \\r \\t \\uXXXX)",
                                super::display::escape_json(other.encode_utf8(&mut [0; 4]))
                            ),
                        ))
                    }
                }
            }
            c if (c as u32) < 0x20 => {
                return Err(PErr::new(
                    i,
                    format!(
                        "control character U+{:04X} in a string must be escaped",
                        c as u32
                    ),
                ))
            }
            c => out.push(c),
        }
    }
}

fn hex4(it: &mut impl Iterator<Item = (usize, char)>, at: usize) -> Result<u32, PErr> {
    let mut v = 0u32;
    for _ in 0..4 {
        match it.next().and_then(|(_, c)| c.to_digit(16)) {
            Some(d) => v = v * 16 + d,
            None => return Err(PErr::new(at, "\\u must be followed by four hex digits")),
        }
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Attribute paths, values, operators

/// `[urn ":"] attr ["." sub]`. The URN is everything before the last ':', so the `.` in `2.0`
/// never splits it.
fn parse_path_text(text: &str) -> Result<AttrPath, String> {
    let (urn, rest) = match text.rfind(':') {
        Some(i) => {
            let (urn, rest) = (&text[..i], &text[i + 1..]);
            check_urn(urn)?;
            if rest.is_empty() {
                return Err(format!(
                    "expected an attribute name after the schema URN '{}:'",
                    truncate(urn)
                ));
            }
            (Some(urn.to_string()), rest)
        }
        None => (None, text),
    };
    let mut parts = rest.split('.');
    let attr = parts.next().unwrap_or_default();
    let sub = parts.next();
    if parts.next().is_some() {
        return Err(format!(
            "'{}' has more than one level of sub-attribute",
            truncate(rest)
        ));
    }
    check_name(attr, "attribute")?;
    if let Some(s) = sub {
        check_name(s, "sub-attribute")?;
    }
    Ok(AttrPath {
        urn,
        attr: attr.to_string(),
        sub_attr: sub.map(str::to_string),
    })
}

/// RFC 7644 ATTRNAME = ALPHA *(ALPHA / DIGIT / "-" / "_"), plus RFC 7643's `$ref`.
fn check_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() {
        let article = if what.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        return Err(format!("expected {article} {what} name, found nothing"));
    }
    if name == "$ref" {
        return Ok(());
    }
    let mut cs = name.chars();
    let ok = cs.next().is_some_and(|c| c.is_ascii_alphabetic())
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a valid {what} name (a letter, then letters, digits, '-' or '_')",
            truncate(name)
        ))
    }
}

fn check_urn(urn: &str) -> Result<(), String> {
    let looks_like_urn = urn.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
        && urn.split(':').all(|seg| !seg.is_empty())
        && urn
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~+!$&'*,;=@/%:".contains(c));
    if looks_like_urn {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a schema URN (expected 'urn:…:attribute' or a plain attribute name)",
            truncate(urn)
        ))
    }
}

fn parse_op(word: &str) -> Option<CompareOp> {
    CompareOp::ALL
        .into_iter()
        .find(|op| word.eq_ignore_ascii_case(op.as_str()))
}

/// JSON number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`. Integers stay
/// integers (i64, else u64); anything with a fraction or exponent, or too large, is an f64.
fn parse_number(w: &str) -> Result<Number, String> {
    let b = w.as_bytes();
    let digits = |mut i: usize| {
        let from = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i, i > from)
    };
    let mut i = usize::from(b.first() == Some(&b'-'));
    let (after_int, has_int) = digits(i);
    let grammar_ok = 'g: {
        if !has_int || (b.get(i) == Some(&b'0') && after_int > i + 1) {
            break 'g false;
        }
        i = after_int;
        let mut integral = true;
        if b.get(i) == Some(&b'.') {
            let (j, any) = digits(i + 1);
            if !any {
                break 'g false;
            }
            i = j;
            integral = false;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let (j, any) = digits(i);
            if !any {
                break 'g false;
            }
            i = j;
            integral = false;
        }
        if i != b.len() {
            break 'g false;
        }
        if integral {
            if let Ok(n) = w.parse::<i64>() {
                return Ok(Number::from(n));
            }
            if let Ok(n) = w.parse::<u64>() {
                return Ok(Number::from(n));
            }
        }
        true
    };
    if !grammar_ok {
        return Err(format!(
            "expected a value (a string in double quotes, a number, true, false or null), \
             found '{}'",
            truncate(w)
        ));
    }
    w.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .ok_or_else(|| format!("number '{}' is out of range", truncate(w)))
}

// ---------------------------------------------------------------------------------------------
// Parser

struct Parser<'a> {
    input: &'a str,
    toks: Vec<Token<'a>>,
    pos: usize,
    depth: usize,
    comparisons: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str, toks: Vec<Token<'a>>) -> Self {
        Parser {
            input,
            toks,
            pos: 0,
            depth: 0,
            comparisons: 0,
        }
    }

    fn peek(&self) -> Option<&Token<'a>> {
        self.toks.get(self.pos)
    }

    fn peek_at(&self, ahead: usize) -> Option<&Token<'a>> {
        self.toks.get(self.pos + ahead)
    }

    fn peek_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Token { tok: Tok::Bare(w), .. }) if w.eq_ignore_ascii_case(kw))
    }

    /// Byte offset of the current token (or the end of input).
    fn here(&self) -> usize {
        self.peek().map_or(self.input.len(), |t| t.start)
    }

    fn found(&self) -> String {
        self.peek()
            .map_or_else(|| "the end of the input".to_string(), Token::describe)
    }

    fn expected(&self, what: &str) -> PErr {
        PErr::new(
            self.here(),
            format!("expected {what}, found {}", self.found()),
        )
    }

    /// Called before every recursive descent: this is what bounds the stack.
    fn enter(&mut self) -> Result<(), PErr> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(PErr::new(
                self.here(),
                format!(
                    "nested deeper than {MAX_DEPTH} levels (parentheses, 'not' and value filters)"
                ),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn count_comparison(&mut self, at: usize) -> Result<(), PErr> {
        self.comparisons += 1;
        if self.comparisons > MAX_COMPARISONS {
            return Err(PErr::new(
                at,
                format!("more than {MAX_COMPARISONS} comparisons"),
            ));
        }
        Ok(())
    }

    fn expect_close(&mut self, close: Tok<'static>, open_at: usize) -> Result<(), PErr> {
        if self.peek().is_some_and(|t| t.tok == close) {
            self.pos += 1;
            return Ok(());
        }
        let (c, o) = if close == Tok::RParen {
            (')', '(')
        } else {
            (']', '[')
        };
        let open_pos = self.input[..open_at].chars().count() + 1;
        Err(self.expected(&format!(
            "'and', 'or' or '{c}' closing the '{o}' at position {open_pos}"
        )))
    }

    fn parse_or(&mut self, in_value_path: bool) -> Result<Filter, PErr> {
        let mut left = self.parse_and(in_value_path)?;
        while self.peek_keyword("or") {
            self.pos += 1;
            let right = self.parse_and(in_value_path)?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn parse_and(&mut self, in_value_path: bool) -> Result<Filter, PErr> {
        let mut left = self.parse_unary(in_value_path)?;
        while self.peek_keyword("and") {
            self.pos += 1;
            let right = self.parse_unary(in_value_path)?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn parse_unary(&mut self, in_value_path: bool) -> Result<Filter, PErr> {
        let Some(t) = self.peek() else {
            return Err(self.expected("an attribute path, '(' or 'not ('"));
        };
        match &t.tok {
            Tok::LParen => {
                let open_at = t.start;
                self.enter()?;
                self.pos += 1;
                let f = self.parse_or(in_value_path)?;
                self.expect_close(Tok::RParen, open_at)?;
                self.leave();
                Ok(f)
            }
            Tok::Bare(w) if w.eq_ignore_ascii_case("not") => {
                match self.peek_at(1).map(|t| &t.tok) {
                    Some(Tok::LParen) => {
                        let open_at = self.peek_at(1).map_or(0, |t| t.start);
                        self.enter()?;
                        self.pos += 2;
                        let f = self.parse_or(in_value_path)?;
                        self.expect_close(Tok::RParen, open_at)?;
                        self.leave();
                        Ok(Filter::Not(Box::new(f)))
                    }
                    // `not eq "x"`, `not pr`, `not[...]`: an attribute that happens to be named "not".
                    Some(Tok::Bare(op))
                        if op.eq_ignore_ascii_case("pr") || parse_op(op).is_some() =>
                    {
                        self.parse_attr_expr(in_value_path)
                    }
                    Some(Tok::LBracket) => self.parse_attr_expr(in_value_path),
                    _ => {
                        self.pos += 1;
                        Err(self.expected("'(' after 'not'"))
                    }
                }
            }
            Tok::Bare(_) => self.parse_attr_expr(in_value_path),
            _ => Err(self.expected("an attribute path, '(' or 'not ('")),
        }
    }

    /// Takes a bare token and parses it as an attribute path.
    fn take_path(&mut self) -> Result<(AttrPath, usize, usize), PErr> {
        match self.peek() {
            Some(&Token {
                tok: Tok::Bare(w),
                start,
                end,
            }) => {
                let path = parse_path_text(w).map_err(|m| PErr::new(start, m))?;
                self.pos += 1;
                Ok((path, start, end))
            }
            _ => Err(self.expected("an attribute path")),
        }
    }

    fn parse_attr_expr(&mut self, in_value_path: bool) -> Result<Filter, PErr> {
        let (path, start, _) = self.take_path()?;
        if !matches!(self.peek().map(|t| &t.tok), Some(Tok::LBracket)) {
            return self.parse_comparison(path, start);
        }
        if in_value_path {
            return Err(PErr::new(
                self.here(),
                "value filters '[…]' cannot be nested",
            ));
        }
        let inner = self.parse_value_filter(&path)?;
        match self.take_dot_sub()? {
            Some(sub) => {
                // Sugar: `emails[type eq "work"].value eq "x"` ≡ `emails[type eq "work" and value eq "x"]`.
                let at = self.toks.get(self.pos - 1).map_or(0, |t| t.start);
                let cmp = self.parse_comparison(
                    AttrPath {
                        urn: None,
                        attr: sub,
                        sub_attr: None,
                    },
                    at,
                )?;
                Ok(Filter::ValuePath(
                    path,
                    Box::new(Filter::And(Box::new(inner), Box::new(cmp))),
                ))
            }
            None => Ok(Filter::ValuePath(path, Box::new(inner))),
        }
    }

    /// `[ valFilter ]` with the current token at `[`.
    fn parse_value_filter(&mut self, path: &AttrPath) -> Result<Filter, PErr> {
        let open_at = self.here();
        if path.sub_attr.is_some() {
            return Err(PErr::new(
                open_at,
                "a value filter '[…]' must follow an attribute without a sub-attribute \
                 (write 'emails[type eq \"work\"].value', not 'emails.value[…]')",
            ));
        }
        self.enter()?;
        self.pos += 1;
        let inner = self.parse_or(true)?;
        self.expect_close(Tok::RBracket, open_at)?;
        self.leave();
        Ok(inner)
    }

    /// `.subAttr` written directly after `]`.
    fn take_dot_sub(&mut self) -> Result<Option<String>, PErr> {
        let prev_end = self.toks.get(self.pos.wrapping_sub(1)).map_or(0, |t| t.end);
        match self.peek() {
            Some(&Token {
                tok: Tok::Bare(w),
                start,
                ..
            }) if w.starts_with('.') => {
                if start != prev_end {
                    return Err(PErr::new(start, "'.' must follow ']' without a space"));
                }
                let sub = &w[1..];
                check_name(sub, "sub-attribute").map_err(|m| PErr::new(start, m))?;
                self.pos += 1;
                Ok(Some(sub.to_string()))
            }
            _ => Ok(None),
        }
    }

    fn parse_comparison(&mut self, path: AttrPath, at: usize) -> Result<Filter, PErr> {
        let op_word = match self.peek() {
            Some(Token {
                tok: Tok::Bare(w), ..
            }) => Some(*w),
            _ => None,
        };
        if op_word.is_some_and(|w| w.eq_ignore_ascii_case("pr")) {
            self.pos += 1;
            self.count_comparison(at)?;
            return Ok(Filter::Present(path));
        }
        let Some(op) = op_word.and_then(parse_op) else {
            return Err(self.expected(&format!(
                "an operator (eq, ne, co, sw, ew, gt, ge, lt, le or pr) after '{}'",
                truncate(&path.to_string())
            )));
        };
        self.pos += 1;
        let value = self.parse_value(op)?;
        self.count_comparison(at)?;
        Ok(Filter::Compare(path, op, value))
    }

    fn parse_value(&mut self, op: CompareOp) -> Result<CompValue, PErr> {
        let expected = || {
            format!(
                "a value after '{}' (a string in double quotes, a number, true, false or null)",
                op.as_str()
            )
        };
        let Some(t) = self.peek() else {
            return Err(self.expected(&expected()));
        };
        let v = match &t.tok {
            Tok::Str(s) => CompValue::String(s.clone()),
            Tok::Bare(w) if w.eq_ignore_ascii_case("true") => CompValue::Bool(true),
            Tok::Bare(w) if w.eq_ignore_ascii_case("false") => CompValue::Bool(false),
            Tok::Bare(w) if w.eq_ignore_ascii_case("null") => CompValue::Null,
            Tok::Bare(w) if w.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
                CompValue::Number(parse_number(w).map_err(|m| PErr::new(t.start, m))?)
            }
            _ => return Err(self.expected(&expected())),
        };
        self.pos += 1;
        Ok(v)
    }

    fn parse_patch_path(&mut self) -> Result<PatchPath, PErr> {
        if self.toks.is_empty() {
            return Err(PErr::new(0, "the path is empty"));
        }
        let (attr, _, _) = self.take_path()?;
        let mut path = PatchPath {
            attr,
            value_filter: None,
            sub_attr: None,
        };
        if matches!(self.peek().map(|t| &t.tok), Some(Tok::LBracket)) {
            let inner = self.parse_value_filter(&path.attr)?;
            path.value_filter = Some(inner);
            path.sub_attr = self.take_dot_sub()?;
        }
        if self.peek().is_some() {
            let what = if path.value_filter.is_some() && path.sub_attr.is_none() {
                "'.subAttribute' or the end of the path"
            } else {
                "the end of the path"
            };
            return Err(self.expected(what));
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

    fn p(attr: &str) -> AttrPath {
        AttrPath {
            urn: None,
            attr: attr.into(),
            sub_attr: None,
        }
    }
    fn ps(attr: &str, sub: &str) -> AttrPath {
        AttrPath {
            urn: None,
            attr: attr.into(),
            sub_attr: Some(sub.into()),
        }
    }
    fn s(v: &str) -> CompValue {
        CompValue::String(v.into())
    }
    fn cmp(path: AttrPath, op: CompareOp, v: CompValue) -> Filter {
        Filter::Compare(path, op, v)
    }
    fn and(a: Filter, b: Filter) -> Filter {
        Filter::And(Box::new(a), Box::new(b))
    }
    fn or(a: Filter, b: Filter) -> Filter {
        Filter::Or(Box::new(a), Box::new(b))
    }
    fn not(a: Filter) -> Filter {
        Filter::Not(Box::new(a))
    }
    fn vp(path: AttrPath, f: Filter) -> Filter {
        Filter::ValuePath(path, Box::new(f))
    }
    fn err(input: &str) -> ScimError {
        match parse_filter(input) {
            Err(e) => e,
            Ok(f) => panic!("{input:?} parsed as {f:?}"),
        }
    }
    fn ok(input: &str) -> Filter {
        match parse_filter(input) {
            Ok(f) => f,
            Err(e) => panic!("{input:?}: {e}"),
        }
    }

    #[test]
    fn every_operator() {
        for op in CompareOp::ALL {
            let text = format!("title {} \"x\"", op.as_str());
            assert_eq!(ok(&text), cmp(p("title"), op, s("x")));
            let upper = format!("title {} \"x\"", op.as_str().to_uppercase());
            assert_eq!(ok(&upper), cmp(p("title"), op, s("x")));
        }
        assert_eq!(ok("title pr"), Filter::Present(p("title")));
        assert_eq!(ok("title PR"), Filter::Present(p("title")));
    }

    #[test]
    fn idp_examples() {
        assert_eq!(
            ok(r#"userName eq "bjensen""#),
            cmp(p("userName"), CompareOp::Eq, s("bjensen"))
        );
        assert_eq!(
            ok(r#"externalId eq "00u1abcd""#),
            cmp(p("externalId"), CompareOp::Eq, s("00u1abcd"))
        );
        assert_eq!(
            ok(r#"displayName eq "Admins""#),
            cmp(p("displayName"), CompareOp::Eq, s("Admins"))
        );
        assert_eq!(
            ok(r#"id eq "2819c223-7f76-453a-919d-413861904646""#),
            cmp(
                p("id"),
                CompareOp::Eq,
                s("2819c223-7f76-453a-919d-413861904646")
            )
        );
        assert_eq!(
            ok(r#"emails[type eq "work"].value eq "b@example.com""#),
            vp(
                p("emails"),
                and(
                    cmp(p("type"), CompareOp::Eq, s("work")),
                    cmp(p("value"), CompareOp::Eq, s("b@example.com"))
                )
            )
        );
        assert_eq!(
            ok(r#"userName eq "x" and externalId eq "y""#),
            and(
                cmp(p("userName"), CompareOp::Eq, s("x")),
                cmp(p("externalId"), CompareOp::Eq, s("y"))
            )
        );
        // Okta's start page filter, Entra's "test connection" GUID.
        assert!(parse_filter(r#"userName eq "0b9e3a5c-6f1d-4c7e-9a1b-2d3c4e5f6a7b""#).is_ok());
    }

    #[test]
    fn precedence_not_and_or() {
        let a = cmp(p("a"), CompareOp::Eq, CompValue::Number(1.into()));
        let b = cmp(p("b"), CompareOp::Eq, CompValue::Number(2.into()));
        let c = cmp(p("c"), CompareOp::Eq, CompValue::Number(3.into()));
        assert_eq!(
            ok("a eq 1 or b eq 2 and c eq 3"),
            or(a.clone(), and(b.clone(), c.clone()))
        );
        assert_eq!(
            ok("a eq 1 and b eq 2 or c eq 3"),
            or(and(a.clone(), b.clone()), c.clone())
        );
        assert_eq!(
            ok("(a eq 1 or b eq 2) and c eq 3"),
            and(or(a.clone(), b.clone()), c.clone())
        );
        assert_eq!(
            ok("a eq 1 and b eq 2 and c eq 3"),
            and(and(a.clone(), b.clone()), c.clone())
        );
        assert_eq!(
            ok("a eq 1 or b eq 2 or c eq 3"),
            or(or(a.clone(), b.clone()), c.clone())
        );
        assert_eq!(
            ok("not (a eq 1) and b eq 2"),
            and(not(a.clone()), b.clone())
        );
        assert_eq!(ok("NOT(a eq 1 or b eq 2)"), not(or(a.clone(), b.clone())));
        assert_eq!(ok("a eq 1 AND b eq 2 Or c eq 3"), or(and(a.clone(), b), c));
        assert_eq!(ok("((a eq 1))"), a);
    }

    #[test]
    fn keywords_case_insensitive_names_keep_case() {
        assert_eq!(
            ok("UserName EQ \"X\""),
            cmp(p("UserName"), CompareOp::Eq, s("X"))
        );
        assert_eq!(
            ok("active eq TRUE"),
            cmp(p("active"), CompareOp::Eq, CompValue::Bool(true))
        );
        assert_eq!(
            ok("active eq False"),
            cmp(p("active"), CompareOp::Eq, CompValue::Bool(false))
        );
        assert_eq!(
            ok("title eq NULL"),
            cmp(p("title"), CompareOp::Eq, CompValue::Null)
        );
    }

    #[test]
    fn attribute_named_like_a_keyword() {
        assert_eq!(ok("not eq \"x\""), cmp(p("not"), CompareOp::Eq, s("x")));
        assert_eq!(
            ok("and pr or or pr"),
            or(Filter::Present(p("and")), Filter::Present(p("or")))
        );
        assert_eq!(ok("not pr"), Filter::Present(p("not")));
        let e = err("not userName eq \"x\"");
        assert!(e.detail.contains("'(' after 'not'"), "{}", e.detail);
    }

    #[test]
    fn numbers() {
        let n = |t: &str| match ok(&format!("x eq {t}")) {
            Filter::Compare(_, _, CompValue::Number(n)) => n,
            f => panic!("{f:?}"),
        };
        assert_eq!(n("0"), Number::from(0));
        assert_eq!(n("-12"), Number::from(-12));
        assert_eq!(n("18446744073709551615"), Number::from(u64::MAX));
        assert!(n("1.5").is_f64());
        assert_eq!(n("1.5").as_f64(), Some(1.5));
        assert_eq!(n("-2.5e3").as_f64(), Some(-2500.0));
        assert_eq!(n("1E2").as_f64(), Some(100.0));
        assert!(n("99999999999999999999").is_f64());
        for bad in [
            "01", "1.", ".5", "1e", "+1", "1.2.3", "0x10", "--1", "1e400", "-",
        ] {
            let e = err(&format!("x eq {bad}"));
            assert_eq!(
                e.scim_type,
                Some(crate::scim::ScimType::InvalidFilter),
                "{bad}"
            );
        }
    }

    #[test]
    fn string_escapes() {
        let v = |t: &str| match ok(&format!("x eq {t}")) {
            Filter::Compare(_, _, CompValue::String(s)) => s,
            f => panic!("{f:?}"),
        };
        assert_eq!(v(r#""a\"b\\c\/d""#), "a\"b\\c/d");
        assert_eq!(v(r#""\b\f\n\r\t""#), "\u{8}\u{c}\n\r\t");
        assert_eq!(v(r#""\u00e9\u00E9""#), "éé");
        assert_eq!(v(r#""\ud83d\ude00""#), "😀");
        assert_eq!(v("\"日本語 😀\""), "日本語 😀");
        assert_eq!(v(r#""""#), "");
        assert_eq!(v(r#""a b (c) [d]""#), "a b (c) [d]");
        for bad in [
            r#""\ud800""#,
            r#""\ud800\u0041""#,
            r#""\udc00""#,
            r#""\x""#,
            r#""\u12""#,
            r#""\u12g4""#,
            "\"a\u{0}b\"",
            "\"a\nb\"",
            "\"abc",
            "\"abc\\",
            "\"abc\\\"",
        ] {
            let e = err(&format!("x eq {bad}"));
            assert_eq!(
                e.scim_type,
                Some(crate::scim::ScimType::InvalidFilter),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sub_attributes_and_urns() {
        assert_eq!(
            ok("name.givenName sw \"Ba\""),
            cmp(ps("name", "givenName"), CompareOp::Sw, s("Ba"))
        );
        let emp = AttrPath {
            urn: Some(ENT.into()),
            attr: "employeeNumber".into(),
            sub_attr: None,
        };
        assert_eq!(
            ok(&format!("{ENT}:employeeNumber eq \"701984\"")),
            cmp(emp, CompareOp::Eq, s("701984"))
        );
        let mgr = AttrPath {
            urn: Some(ENT.into()),
            attr: "manager".into(),
            sub_attr: Some("value".into()),
        };
        assert_eq!(
            ok(&format!("{ENT}:manager.value eq \"26118915\"")),
            cmp(mgr, CompareOp::Eq, s("26118915"))
        );
        let core = "urn:ietf:params:scim:schemas:core:2.0:User";
        let un = AttrPath {
            urn: Some(core.into()),
            attr: "userName".into(),
            sub_attr: None,
        };
        assert_eq!(
            ok(&format!("{core}:userName eq \"x\"")),
            cmp(un, CompareOp::Eq, s("x"))
        );
        assert_eq!(
            ok("members.$ref pr"),
            Filter::Present(ps("members", "$ref"))
        );
        for bad in [
            "a.b.c eq 1",
            "name. eq 1",
            ".name eq 1",
            "1abc eq 1",
            "foo:bar eq 1",
            "urn::x:attr eq 1",
            &format!("{ENT}: eq 1"),
            "na*me eq 1",
            "usér eq 1",
        ] {
            let e = err(bad);
            assert_eq!(
                e.scim_type,
                Some(crate::scim::ScimType::InvalidFilter),
                "{bad}"
            );
        }
    }

    #[test]
    fn value_paths() {
        let work = cmp(p("type"), CompareOp::Eq, s("work"));
        let primary = cmp(p("primary"), CompareOp::Eq, CompValue::Bool(true));
        assert_eq!(
            ok(r#"emails[type eq "work" and primary eq true]"#),
            vp(p("emails"), and(work.clone(), primary.clone()))
        );
        assert_eq!(
            ok(r#"emails[type eq "work"] and userName pr"#),
            and(
                vp(p("emails"), work.clone()),
                Filter::Present(p("userName"))
            )
        );
        assert_eq!(
            ok(r#"emails [type eq "work"]"#),
            vp(p("emails"), work.clone())
        );
        assert_eq!(
            ok(r#"emails[not (type eq "work")]"#),
            vp(p("emails"), not(work.clone()))
        );
        assert_eq!(
            ok(r#"emails[type eq "work" or (primary eq true)].value pr"#),
            vp(
                p("emails"),
                and(or(work.clone(), primary), Filter::Present(p("value")))
            )
        );
        let addr = AttrPath {
            urn: Some(ENT.into()),
            attr: "x".into(),
            sub_attr: None,
        };
        assert_eq!(ok(&format!("{ENT}:x[type eq \"work\"]")), vp(addr, work));
        for bad in [
            r#"emails[type eq "work"[x eq 1]]"#,
            r#"emails[types[x eq 1]]"#,
            r#"emails.value[type eq "work"]"#,
            r#"emails[type eq "work"]. value eq "x""#,
            r#"emails[type eq "work"] .value eq "x""#,
            r#"emails[type eq "work"].value"#,
            r#"emails[type eq "work"].value.x eq "y""#,
            r#"emails[type eq "work""#,
            r#"emails[]"#,
            r#"emails[type eq "work")"#,
        ] {
            let e = err(bad);
            assert_eq!(
                e.scim_type,
                Some(crate::scim::ScimType::InvalidFilter),
                "{bad}"
            );
        }
    }

    #[test]
    fn errors_name_the_position_and_the_expectation() {
        let e = err(r#"userName eq"#);
        assert!(e.detail.contains("position 12"), "{}", e.detail);
        assert!(
            e.detail.contains("expected a value after 'eq'"),
            "{}",
            e.detail
        );
        let e = err(r#"userName is "x""#);
        assert!(e.detail.contains("position 10"), "{}", e.detail);
        assert!(e.detail.contains("expected an operator"), "{}", e.detail);
        let e = err(r#"userName eq x"#);
        assert!(e.detail.contains("double quotes"), "{}", e.detail);
        let e = err(r#"(userName eq "x""#);
        assert!(
            e.detail.contains("')' closing the '(' at position 1"),
            "{}",
            e.detail
        );
        let e = err(r#"userName eq "x")"#);
        assert!(e.detail.contains("without a matching '('"), "{}", e.detail);
        let e = err(r#"userName eq "x" "y""#);
        assert!(
            e.detail.contains("expected 'and', 'or' or the end"),
            "{}",
            e.detail
        );
        let e = err(r#"a eq 1 and"#);
        assert!(e.detail.contains("end of the input"), "{}", e.detail);
        let e = err(r#"x eq "é\q""#);
        assert!(e.detail.contains("position 8"), "{}", e.detail);
        assert!(err("").detail.contains("empty"));
        assert!(err("   ").detail.contains("empty"));
        assert_eq!(err("()").status, 400);
    }

    #[test]
    fn limits() {
        // 5000 '(' fails fast without a deep stack; run it on a small stack to prove it.
        let deep = std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(|| {
                let e = err(&"(".repeat(5000));
                assert!(e.detail.contains("nested deeper than 64"), "{}", e.detail);
                let e = err(&format!("{}a pr{}", "not (".repeat(1000), ")".repeat(1000)));
                assert!(e.detail.contains("nested deeper than 64"), "{}", e.detail);
            })
            .and_then(|h| h.join().map_err(|_| std::io::Error::other("panicked")));
        assert!(deep.is_ok());

        // Exactly at the depth limit is fine, one more is not.
        let at_limit = format!("{}a pr{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse_filter(&at_limit).is_ok());
        let over = format!(
            "{}a pr{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert!(err(&over).detail.contains("nested deeper"));

        let long = format!("userName eq \"{}\"", "a".repeat(100_000));
        assert!(err(&long).detail.contains("longer than 8192"));
        let exactly = format!("a eq \"{}\"", "é".repeat(MAX_FILTER_CHARS - 7));
        assert_eq!(exactly.chars().count(), MAX_FILTER_CHARS);
        assert!(parse_filter(&exactly).is_ok());

        let many = vec!["a pr"; MAX_COMPARISONS].join(" and ");
        assert!(parse_filter(&many).is_ok());
        let too_many = vec!["a pr"; MAX_COMPARISONS + 1].join(" or ");
        assert!(err(&too_many).detail.contains("more than 256 comparisons"));
    }

    #[test]
    fn sugar_that_would_print_deeper_than_the_limit_is_rejected() {
        let wrap = |n: usize, core: &str| format!("{}{core}{}", "not (".repeat(n), ")".repeat(n));
        // 63 'not's + '[' = 64 levels as written. The sugar turns `[a or b].v pr` into
        // `[(a or b) and v pr]`: one more level in canonical form, so it is refused...
        let e = err(&wrap(MAX_DEPTH - 1, "x[a pr or b pr].v pr"));
        assert!(e.detail.contains("canonical form"), "{}", e.detail);
        // ...while one level less, or an inner `and`, is fine and round-trips.
        for text in [
            wrap(MAX_DEPTH - 2, "x[a pr or b pr].v pr"),
            wrap(MAX_DEPTH - 1, "x[a pr and b pr].v pr"),
        ] {
            let f = ok(&text);
            assert_eq!(parse_filter(&f.to_string()), Ok(f));
        }
        // Redundant parentheses written in the input do not count against the canonical form.
        let text = format!(
            "x[{}a pr or b pr{}].v pr",
            "(".repeat(MAX_DEPTH - 1),
            ")".repeat(MAX_DEPTH - 1)
        );
        let f = ok(&text);
        assert_eq!(f.to_string(), "x[(a pr or b pr) and v pr]");
    }

    #[test]
    fn hostile_inputs_return_errors() {
        for bad in [
            "\0",
            "userName eq \"x\"\0",
            "userName\0 eq \"x\"",
            "\u{feff}userName eq \"x\"",
            "userName\u{a0}eq \"x\"",
            "]",
            "[",
            ")",
            "\"",
            "\\",
            "eq",
            "userName eq \"x\" and",
            "userName eq \"x\" or or",
            "not",
            "not (",
            "not ()",
            "😀 eq 1",
            &"[".repeat(5000),
            &"a[".repeat(5000),
            &"not (".repeat(5000),
        ] {
            let e = err(bad);
            assert_eq!(e.status, 400);
            assert_eq!(
                e.scim_type,
                Some(crate::scim::ScimType::InvalidFilter),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn attr_paths() {
        assert_eq!(parse_attr_path("userName"), Ok(p("userName")));
        assert_eq!(
            parse_attr_path(" name.givenName "),
            Ok(ps("name", "givenName"))
        );
        assert_eq!(
            parse_attr_path(&format!("{ENT}:manager.value")),
            Ok(AttrPath {
                urn: Some(ENT.into()),
                attr: "manager".into(),
                sub_attr: Some("value".into())
            })
        );
        assert_eq!(
            parse_attr_path(&format!("{ENT}:employeeNumber")),
            Ok(AttrPath {
                urn: Some(ENT.into()),
                attr: "employeeNumber".into(),
                sub_attr: None
            })
        );
        for bad in [
            "",
            "  ",
            "user name",
            "emails[type eq \"work\"]",
            "a.b.c",
            "1x",
            "x)",
            "urn:",
        ] {
            let e = parse_attr_path(bad).expect_err(bad);
            assert_eq!(
                e.scim_type,
                Some(crate::scim::ScimType::InvalidPath),
                "{bad}"
            );
            assert!(
                e.detail.starts_with("invalid attribute path"),
                "{}",
                e.detail
            );
        }
        let e = parse_attr_path("user name").expect_err("space");
        assert!(e.detail.contains("space at position 5"), "{}", e.detail);
    }

    #[test]
    fn patch_paths() {
        let pp = |t: &str| parse_patch_path(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(
            pp("name.givenName"),
            PatchPath {
                attr: ps("name", "givenName"),
                value_filter: None,
                sub_attr: None
            }
        );
        assert_eq!(
            pp("active"),
            PatchPath {
                attr: p("active"),
                value_filter: None,
                sub_attr: None
            }
        );
        assert_eq!(
            pp(r#"members[value eq "2819c223"]"#),
            PatchPath {
                attr: p("members"),
                value_filter: Some(cmp(p("value"), CompareOp::Eq, s("2819c223"))),
                sub_attr: None
            }
        );
        assert_eq!(
            pp(r#"emails[type eq "work"].value"#),
            PatchPath {
                attr: p("emails"),
                value_filter: Some(cmp(p("type"), CompareOp::Eq, s("work"))),
                sub_attr: Some("value".into())
            }
        );
        assert_eq!(
            pp(&format!("{ENT}:manager")),
            PatchPath {
                attr: AttrPath {
                    urn: Some(ENT.into()),
                    attr: "manager".into(),
                    sub_attr: None
                },
                value_filter: None,
                sub_attr: None
            }
        );
        assert_eq!(
            pp(&format!("{ENT}:manager.value")),
            PatchPath {
                attr: AttrPath {
                    urn: Some(ENT.into()),
                    attr: "manager".into(),
                    sub_attr: Some("value".into())
                },
                value_filter: None,
                sub_attr: None
            }
        );
        assert_eq!(
            pp(r#"addresses[type eq "work" and primary eq TRUE].streetAddress"#)
                .sub_attr
                .as_deref(),
            Some("streetAddress")
        );
        for bad in [
            "",
            "emails[type eq \"work\"] eq \"x\"",
            "emails[type eq \"work\"].value eq \"x\"",
            "emails[type eq \"work\"].value.x",
            "emails[type eq \"work\"",
            "emails[type eq]",
            "userName eq \"x\"",
            "(userName)",
            "emails.value[type eq \"work\"]",
            "a b",
            "\"x\"",
        ] {
            let e = parse_patch_path(bad).expect_err(bad);
            assert_eq!(
                e.scim_type,
                Some(crate::scim::ScimType::InvalidPath),
                "{bad}"
            );
            assert!(e.detail.starts_with("invalid path"), "{}", e.detail);
        }
        let e = parse_patch_path("emails[type eq \"work\"] x").expect_err("trailing");
        assert!(
            e.detail.contains("'.subAttribute' or the end of the path"),
            "{}",
            e.detail
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(s in any::<String>()) {
            let _ = parse_filter(&s);
            let _ = parse_patch_path(&s);
            let _ = parse_attr_path(&s);
        }

        #[test]
        fn filterish_text_never_panics(s in r#"[a-zA-Z0-9 ()\[\]".:\\u$_-]{0,80}"#) {
            let _ = parse_filter(&s);
            let _ = parse_patch_path(&s);
            let _ = parse_attr_path(&s);
        }

        #[test]
        fn mangled_valid_filters_never_panic(cut in 0usize..200, insert in any::<char>()) {
            let base = format!(
                r#"emails[type eq "wo\"rk" and not (primary eq true)].value co "x" or {ENT}:manager.value eq "\ud83d\ude00" and n le -1.5e3"#
            );
            let mut chars: Vec<char> = base.chars().collect();
            let i = cut % (chars.len() + 1);
            let mut truncated: String = chars[..i].iter().collect();
            let _ = parse_filter(&truncated);
            let _ = parse_patch_path(&truncated);
            chars.insert(i, insert);
            truncated = chars.into_iter().collect();
            let _ = parse_filter(&truncated);
            let _ = parse_patch_path(&truncated);
        }
    }
}
