//! Recursive-descent parser from [`Tok`]ens to [`Expr`].
//!
//! It reads LaTeX (`\frac`, `\sqrt[3]{}`, `\pm`, matrices, intervals, sets), plain text and
//! Python syntax (`**`, `sqrt()`), with implicit multiplication and mixed numbers (`11 5/6`,
//! `2\frac{1}{2}`). Depth and size are bounded; any failure is a [`ParseError`], never a panic.

use crate::expr::{Const, Expr, Func, Num};
use crate::lexer::{lex, Thousands, Tok, Token};
use crate::number::{self, Rat};
use num_bigint::BigInt;
use num_traits::{One, Zero};

/// Why an answer could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

const MAX_DEPTH: u32 = 60;
const MAX_TOKENS: usize = 1500;

/// Parses an answer string.
pub fn parse(input: &str, thousands: Thousands) -> Result<Expr, ParseError> {
    let toks = lex(input, thousands).map_err(|e| ParseError(e.0.to_string()))?;
    parse_tokens(toks)
}

/// Parses already-lexed tokens.
pub fn parse_tokens(toks: Vec<Token>) -> Result<Expr, ParseError> {
    if toks.is_empty() {
        return Err(ParseError("empty answer".into()));
    }
    if toks.len() > MAX_TOKENS {
        return Err(ParseError("answer too long".into()));
    }
    if let Some(text) = text_answer(&toks) {
        return Ok(Expr::Text(text));
    }
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let e = p.list(&[])?;
    if p.pos < p.toks.len() {
        return Err(ParseError(format!(
            "unexpected {:?} at token {}",
            p.toks[p.pos].tok, p.pos
        )));
    }
    Ok(e)
}

/// An answer made only of words (`Evelyn`, `odd`, `Mrs. Hilt`, `True`).
fn text_answer(toks: &[Token]) -> Option<String> {
    let all_words = toks.iter().all(|t| match &t.tok {
        Tok::Words(_) => true,
        Tok::Letters(w) => w.len() >= 2,
        Tok::Prime | Tok::Minus => true,
        _ => false,
    });
    let has_word = toks
        .iter()
        .any(|t| matches!(&t.tok, Tok::Words(_) | Tok::Letters(_)));
    if !all_words || !has_word {
        return None;
    }
    let mut s = String::new();
    for t in toks {
        match &t.tok {
            Tok::Words(w) | Tok::Letters(w) => {
                if !s.is_empty() {
                    s.push(' ');
                }
                s.push_str(w);
            }
            Tok::Prime => s.push('\''),
            Tok::Minus => s.push('-'),
            _ => {}
        }
    }
    Some(s)
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    depth: u32,
}

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

fn is_separator(t: &Tok) -> bool {
    matches!(t, Tok::Comma | Tok::Semi | Tok::And | Tok::Or)
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }
    fn peek_at(&self, k: usize) -> Option<&Tok> {
        self.toks.get(self.pos + k).map(|t| &t.tok)
    }
    fn space_before(&self) -> bool {
        self.toks.get(self.pos).is_some_and(|t| t.space_before)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|t| t.tok.clone());
        if t.is_some() {
            self.pos += 1;
        }
        t
    }
    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err("nested too deeply");
        }
        Ok(())
    }
    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// `item (sep item)*`, stopping at any of `closers`.
    fn list(&mut self, closers: &[Tok]) -> Result<Expr, ParseError> {
        self.enter()?;
        let mut items = Vec::new();
        loop {
            while self.peek().is_some_and(is_separator) {
                self.pos += 1;
            }
            match self.peek() {
                None => break,
                Some(t) if closers.contains(t) => break,
                Some(Tok::Dots) => {
                    self.pos += 1;
                    continue;
                }
                _ => {}
            }
            let item = self.relation(closers)?;
            items.push(item);
            match self.peek() {
                Some(t) if is_separator(t) => continue,
                Some(Tok::Dots) => continue,
                _ => break,
            }
        }
        self.leave();
        match items.len() {
            0 => err("empty list"),
            1 => Ok(items.pop().expect("one item")),
            _ => Ok(Expr::List(items)),
        }
    }

    fn relation(&mut self, closers: &[Tok]) -> Result<Expr, ParseError> {
        let first = self.set_expr(closers)?;
        if self.eat(&Tok::In) {
            let rhs = self.set_expr(closers)?;
            return Ok(Expr::In(Box::new(first), Box::new(rhs)));
        }
        let mut items = vec![first];
        let mut ops = Vec::new();
        while let Some(Tok::Rel(op)) = self.peek() {
            let op = *op;
            self.pos += 1;
            if self
                .peek()
                .is_none_or(|t| is_separator(t) || closers.contains(t))
            {
                break;
            }
            ops.push(op);
            items.push(self.set_expr(closers)?);
        }
        if ops.is_empty() {
            Ok(items.pop().expect("one item"))
        } else {
            Ok(Expr::Rel(items, ops))
        }
    }

    fn set_expr(&mut self, closers: &[Tok]) -> Result<Expr, ParseError> {
        let first = self.sum(closers)?;
        let mut op: Option<Tok> = None;
        let mut items = vec![first];
        while let Some(t @ (Tok::Cup | Tok::Cap | Tok::Setminus)) = self.peek() {
            let t = t.clone();
            if op.as_ref().is_some_and(|o| *o != t) {
                break;
            }
            op = Some(t);
            self.pos += 1;
            items.push(self.sum(closers)?);
        }
        Ok(match op {
            None => items.pop().expect("one item"),
            Some(Tok::Cup) => Expr::Union(items),
            Some(_) => Expr::Intersection(items),
        })
    }

    fn sum(&mut self, closers: &[Tok]) -> Result<Expr, ParseError> {
        self.enter()?;
        let mut terms = Vec::new();
        let mut pm: Option<(Expr, bool)> = None; // (first operand, sign of pm)
                                                 // Leading sign.
        let first = match self.peek() {
            Some(Tok::Minus) => {
                self.pos += 1;
                Expr::Neg(Box::new(self.term(closers)?))
            }
            Some(Tok::Plus) => {
                self.pos += 1;
                self.term(closers)?
            }
            Some(Tok::Pm) | Some(Tok::Mp) => {
                self.pos += 1;
                let t = self.term(closers)?;
                pm = Some((Expr::int(0), true));
                t
            }
            _ => self.term(closers)?,
        };
        terms.push(first);
        loop {
            match self.peek() {
                Some(Tok::Plus) => {
                    self.pos += 1;
                    terms.push(self.term(closers)?);
                }
                Some(Tok::Minus) => {
                    self.pos += 1;
                    let t = self.term(closers)?;
                    terms.push(Expr::Neg(Box::new(t)));
                }
                Some(Tok::Pm) | Some(Tok::Mp) => {
                    self.pos += 1;
                    let base = make_sum(std::mem::take(&mut terms));
                    pm = Some((base, true));
                    terms.push(self.term(closers)?);
                }
                _ => break,
            }
        }
        self.leave();
        let rest = make_sum(terms);
        Ok(match pm {
            Some((base, _)) => Expr::PlusMinus(Box::new(base), Box::new(rest)),
            None => rest,
        })
    }

    fn starts_factor(&self) -> bool {
        match self.peek() {
            Some(
                Tok::Num(_)
                | Tok::Letters(_)
                | Tok::Ident(_)
                | Tok::Func(_)
                | Tok::Frac
                | Tok::Sqrt
                | Tok::Binom
                | Tok::LParen
                | Tok::LBrace
                | Tok::LSet
                | Tok::Pi
                | Tok::Infty
                | Tok::BeginEnv(_),
            ) => true,
            Some(Tok::LBrack) => true,
            Some(Tok::Pipe) => false,
            _ => false,
        }
    }

    fn term(&mut self, closers: &[Tok]) -> Result<Expr, ParseError> {
        self.enter()?;
        let mut factors = vec![self.unary(closers)?];
        loop {
            match self.peek() {
                Some(Tok::Star) => {
                    self.pos += 1;
                    factors.push(self.unary(closers)?);
                }
                Some(Tok::Slash) => {
                    self.pos += 1;
                    let d = self.unary(closers)?;
                    let n = make_product(std::mem::take(&mut factors));
                    factors.push(Expr::Div(Box::new(n), Box::new(d)));
                }
                Some(Tok::Func(Func::Mod)) => {
                    self.pos += 1;
                    let m = self.unary(closers)?;
                    let n = make_product(std::mem::take(&mut factors));
                    factors.push(Expr::Func(Func::Mod, vec![n, m]));
                }
                Some(t) if closers.contains(t) => break,
                _ => {
                    if !self.starts_factor() {
                        break;
                    }
                    // Two plain numbers side by side: a mixed number (`11 5/6`) or nothing.
                    let last_is_int_literal = matches!(factors.last(), Some(Expr::Num(n)) if n.places.is_none() && n.value.is_integer())
                        && factors.len() == 1;
                    if let Some(Tok::Num(_)) = self.peek() {
                        if last_is_int_literal
                            && self.peek_at(1) == Some(&Tok::Slash)
                            && matches!(self.peek_at(2), Some(Tok::Num(_)))
                        {
                            let whole = factors.pop().expect("int literal");
                            let num = self.number_literal()?;
                            self.pos += 1; // slash
                            let den = self.number_literal()?;
                            factors.push(mixed(whole, num, den)?);
                            continue;
                        }
                        if matches!(factors.last(), Some(Expr::Num(_))) {
                            return err("two numbers side by side");
                        }
                    }
                    if last_is_int_literal && self.peek() == Some(&Tok::Frac) {
                        if let Some(m) = self.try_mixed_frac(&factors[0])? {
                            factors[0] = m;
                            continue;
                        }
                    }
                    factors.push(self.unary_no_sign(closers)?);
                }
            }
        }
        self.leave();
        Ok(make_product(factors))
    }

    fn number_literal(&mut self) -> Result<Expr, ParseError> {
        match self.next() {
            Some(Tok::Num(s)) => num_literal(&s),
            other => err(format!("expected a number, found {other:?}")),
        }
    }

    /// `2\frac{1}{2}` with integer literals inside is the mixed number 2½.
    fn try_mixed_frac(&mut self, whole: &Expr) -> Result<Option<Expr>, ParseError> {
        let save = self.pos;
        self.pos += 1; // \frac
        let a = self.arg();
        let b = if a.is_ok() { self.arg() } else { err("") };
        match (a, b) {
            (Ok(Expr::Num(a)), Ok(Expr::Num(b)))
                if a.places.is_none()
                    && b.places.is_none()
                    && a.value.is_integer()
                    && b.value.is_integer() =>
            {
                Ok(Some(mixed(whole.clone(), Expr::Num(a), Expr::Num(b))?))
            }
            _ => {
                self.pos = save;
                Ok(None)
            }
        }
    }

    fn unary(&mut self, closers: &[Tok]) -> Result<Expr, ParseError> {
        match self.peek() {
            Some(Tok::Minus) => {
                self.pos += 1;
                Ok(Expr::Neg(Box::new(self.unary(closers)?)))
            }
            Some(Tok::Plus) => {
                self.pos += 1;
                self.unary(closers)
            }
            _ => self.unary_no_sign(closers),
        }
    }

    fn unary_no_sign(&mut self, closers: &[Tok]) -> Result<Expr, ParseError> {
        self.enter()?;
        let base = self.postfix(closers)?;
        let r = if self.eat(&Tok::Caret) {
            let exp = self.exponent(closers)?;
            match exp {
                Exponent::Degree => Ok(Expr::Degree(Box::new(base))),
                Exponent::Value(e) => {
                    let mut r = Expr::Pow(Box::new(base), Box::new(e));
                    r = self.postfix_ops(r)?;
                    Ok(r)
                }
            }
        } else {
            Ok(base)
        };
        self.leave();
        r
    }

    fn exponent(&mut self, closers: &[Tok]) -> Result<Exponent, ParseError> {
        match self.peek() {
            Some(Tok::Degree) => {
                self.pos += 1;
                Ok(Exponent::Degree)
            }
            Some(Tok::LBrace) => {
                if self.peek_at(1) == Some(&Tok::Degree) && self.peek_at(2) == Some(&Tok::RBrace) {
                    self.pos += 3;
                    return Ok(Exponent::Degree);
                }
                Ok(Exponent::Value(self.group()?))
            }
            Some(Tok::Minus) => {
                self.pos += 1;
                let e = self.exponent(closers)?;
                match e {
                    Exponent::Value(v) => Ok(Exponent::Value(Expr::Neg(Box::new(v)))),
                    Exponent::Degree => err("negative degree sign"),
                }
            }
            Some(Tok::Letters(w)) if w.len() > 1 => {
                // `x^ab` is x^a * b in LaTeX.
                let w = w.clone();
                let first = w[..1].to_string();
                self.toks[self.pos].tok = Tok::Letters(w[1..].to_string());
                Ok(Exponent::Value(letter_symbol(&first)))
            }
            _ => Ok(Exponent::Value(self.postfix(closers)?)),
        }
    }

    fn postfix(&mut self, closers: &[Tok]) -> Result<Expr, ParseError> {
        let p = self.primary(closers)?;
        self.postfix_ops(p)
    }

    fn postfix_ops(&mut self, mut e: Expr) -> Result<Expr, ParseError> {
        loop {
            match self.peek() {
                Some(Tok::Bang) => {
                    self.pos += 1;
                    e = Expr::Factorial(Box::new(e));
                }
                Some(Tok::Percent) => {
                    self.pos += 1;
                    e = Expr::Percent(Box::new(e));
                }
                Some(Tok::Degree) => {
                    self.pos += 1;
                    e = Expr::Degree(Box::new(e));
                }
                Some(Tok::Prime) => {
                    self.pos += 1;
                    e = match e {
                        Expr::Sym(s) => Expr::Sym(format!("{s}'")),
                        other => other,
                    };
                }
                Some(Tok::Underscore) => {
                    self.pos += 1;
                    let sub = self.subscript_text()?;
                    e = match e {
                        Expr::Sym(s) => Expr::Sym(format!("{s}_{sub}")),
                        Expr::Num(n) if n.places.is_none() && n.value.is_integer() => {
                            match sub.parse::<u32>() {
                                Ok(base) if (2..=36).contains(&base) => {
                                    Expr::Based(n.value.numer().to_string(), base)
                                }
                                _ => Expr::Num(n),
                            }
                        }
                        // Other subscripts (`\log_2` is handled by the function parser) are
                        // dropped.
                        other => other,
                    };
                }
                Some(Tok::Colon)
                    if matches!(
                        self.peek_at(1),
                        Some(
                            Tok::Num(_)
                                | Tok::Letters(_)
                                | Tok::Ident(_)
                                | Tok::LParen
                                | Tok::Minus
                        )
                    ) =>
                {
                    // A ratio or a time: `3:4`, `12:50`, `A:B`.
                    self.pos += 1;
                    let rhs = self.unary(&[])?;
                    e = Expr::Apply(":".into(), vec![e, rhs]);
                }
                _ => return Ok(e),
            }
        }
    }

    /// The text of a subscript: `1`, `{37}`, `n`.
    fn subscript_text(&mut self) -> Result<String, ParseError> {
        match self.next() {
            Some(Tok::Num(n)) => Ok(n),
            Some(Tok::Letters(w)) => {
                if w.len() > 1 {
                    // `x_ab` subscripts only `a`.
                    self.pos -= 1;
                    self.toks[self.pos].tok = Tok::Letters(w[1..].to_string());
                    Ok(w[..1].to_string())
                } else {
                    Ok(w)
                }
            }
            Some(Tok::Ident(w)) => Ok(w),
            Some(Tok::LBrace) => {
                let mut s = String::new();
                let mut depth = 1;
                while let Some(t) = self.next() {
                    match t {
                        Tok::LBrace => depth += 1,
                        Tok::RBrace => {
                            depth -= 1;
                            if depth == 0 {
                                return Ok(s);
                            }
                        }
                        Tok::Num(n) | Tok::Letters(n) | Tok::Ident(n) | Tok::Words(n) => {
                            s.push_str(&n)
                        }
                        Tok::Plus => s.push('+'),
                        Tok::Minus => s.push('-'),
                        Tok::Comma => s.push(','),
                        _ => s.push('?'),
                    }
                }
                Ok(s)
            }
            other => err(format!("bad subscript {other:?}")),
        }
    }

    /// A `{...}` group, or a single token (for `\frac12`, `\sqrt2`).
    fn arg(&mut self) -> Result<Expr, ParseError> {
        match self.peek() {
            Some(Tok::LBrace) => self.group(),
            Some(Tok::Num(n)) if n.len() > 1 => {
                // `\frac12`: one digit per argument.
                let n = n.clone();
                let (a, rest) = n.split_at(1);
                self.toks[self.pos].tok = Tok::Num(rest.to_string());
                num_literal(a)
            }
            Some(Tok::Letters(w)) if w.len() > 1 => {
                let w = w.clone();
                self.toks[self.pos].tok = Tok::Letters(w[1..].to_string());
                Ok(letter_symbol(&w[..1]))
            }
            _ => self.primary(&[]),
        }
    }

    /// `{ list }`
    fn group(&mut self) -> Result<Expr, ParseError> {
        if !self.eat(&Tok::LBrace) {
            return err("expected {");
        }
        if self.eat(&Tok::RBrace) {
            return err("empty group");
        }
        let e = self.list(&[Tok::RBrace])?;
        if !self.eat(&Tok::RBrace) && self.peek().is_some() {
            return err("unclosed {");
        }
        Ok(e)
    }

    fn primary(&mut self, closers: &[Tok]) -> Result<Expr, ParseError> {
        self.enter()?;
        let r = self.primary_inner(closers);
        self.leave();
        r
    }

    fn primary_inner(&mut self, closers: &[Tok]) -> Result<Expr, ParseError> {
        let Some(tok) = self.next() else {
            return err("unexpected end");
        };
        match tok {
            Tok::Num(s) => {
                let n = num_literal(&s)?;
                // `0.\overline{54}`: a repeating decimal.
                if self.peek() == Some(&Tok::Overline) {
                    let save = self.pos;
                    self.pos += 1;
                    if let Ok(Expr::Num(rep)) = self.arg() {
                        if let Some(v) = repeating_decimal(&s, &rep) {
                            return Ok(v);
                        }
                    }
                    self.pos = save;
                }
                Ok(n)
            }
            Tok::Letters(w) => {
                if w.len() == 1 {
                    let sym = letter_symbol(&w);
                    // `f(x)`: an unknown function applied.
                    if matches!(w.as_str(), "f" | "g" | "h")
                        && self.peek() == Some(&Tok::LParen)
                        && !self.space_before()
                    {
                        self.pos += 1;
                        let args = self.list(&[Tok::RParen])?;
                        self.eat(&Tok::RParen);
                        let args = match args {
                            Expr::List(v) => v,
                            e => vec![e],
                        };
                        return Ok(Expr::Apply(w, args));
                    }
                    Ok(sym)
                } else {
                    // `xy` is x*y; each letter is a symbol. Give back all but the first.
                    self.pos -= 1;
                    self.toks[self.pos].tok = Tok::Letters(w[1..].to_string());
                    self.toks[self.pos].space_before = false;
                    Ok(letter_symbol(&w[..1]))
                }
            }
            Tok::Ident(name) => Ok(Expr::Sym(name)),
            Tok::Words(w) => Ok(Expr::Text(w)),
            Tok::Pi => Ok(Expr::Const(Const::Pi)),
            Tok::Infty => Ok(Expr::Const(Const::Infinity)),
            Tok::Func(f) => self.function(f, closers),
            Tok::Frac => {
                let a = self.arg()?;
                let b = self.arg()?;
                Ok(Expr::Div(Box::new(a), Box::new(b)))
            }
            Tok::Binom => {
                let a = self.arg()?;
                let b = self.arg()?;
                Ok(Expr::Func(Func::Binom, vec![a, b]))
            }
            Tok::Sqrt => {
                let mut index: Option<Expr> = None;
                if self.eat(&Tok::LBrack) {
                    index = Some(self.list(&[Tok::RBrack])?);
                    self.eat(&Tok::RBrack);
                }
                let x = if self.peek() == Some(&Tok::LParen) {
                    self.primary(&[])?
                } else {
                    self.arg()?
                };
                Ok(match index {
                    None => Expr::Func(Func::Sqrt, vec![x]),
                    Some(n) => Expr::Pow(
                        Box::new(x),
                        Box::new(Expr::Div(Box::new(Expr::int(1)), Box::new(n))),
                    ),
                })
            }
            Tok::Overline => self.arg(),
            Tok::LBrace => {
                if self.eat(&Tok::RBrace) {
                    return err("empty group");
                }
                let e = self.list(&[Tok::RBrace])?;
                self.eat(&Tok::RBrace);
                // `{1, 2, 3}` written with plain braces is a set.
                Ok(match e {
                    Expr::List(v) => Expr::Set(v),
                    e => e,
                })
            }
            Tok::LSet => {
                if self.eat(&Tok::RSet) {
                    return Ok(Expr::Set(Vec::new()));
                }
                let e = self.list(&[Tok::RSet, Tok::RBrace])?;
                if !self.eat(&Tok::RSet) {
                    self.eat(&Tok::RBrace);
                }
                Ok(Expr::Set(match e {
                    Expr::List(v) => v,
                    e => vec![e],
                }))
            }
            Tok::LParen | Tok::LBrack => {
                let open_paren = tok == Tok::LParen;
                if self.eat(&Tok::RParen) || self.eat(&Tok::RBrack) {
                    return Ok(if open_paren {
                        Expr::Paren(Vec::new())
                    } else {
                        Expr::Bracket(Vec::new())
                    });
                }
                let e = self.list(&[Tok::RParen, Tok::RBrack])?;
                let close = self.next();
                let close_paren = match close {
                    Some(Tok::RParen) => true,
                    Some(Tok::RBrack) => false,
                    None => open_paren,
                    Some(t) => return err(format!("unexpected {t:?}")),
                };
                let items = match e {
                    Expr::List(v) => v,
                    e => vec![e],
                };
                if open_paren && close_paren {
                    if items.len() == 1 {
                        return Ok(items.into_iter().next().expect("one item"));
                    }
                    return Ok(Expr::Paren(items));
                }
                if !open_paren && !close_paren {
                    return Ok(Expr::Bracket(items));
                }
                if items.len() == 2 {
                    let mut it = items.into_iter();
                    return Ok(Expr::Interval {
                        lo: Box::new(it.next().expect("lo")),
                        hi: Box::new(it.next().expect("hi")),
                        lo_closed: !open_paren,
                        hi_closed: !close_paren,
                    });
                }
                err("mismatched brackets")
            }
            Tok::Pipe => {
                let e = self.sum(&[Tok::Pipe])?;
                if !self.eat(&Tok::Pipe) {
                    return err("unclosed |");
                }
                Ok(Expr::Func(Func::Abs, vec![e]))
            }
            Tok::BeginEnv(env) => self.environment(&env),
            Tok::Minus => Ok(Expr::Neg(Box::new(self.unary(closers)?))),
            t => err(format!("unexpected {t:?}")),
        }
    }

    fn function(&mut self, f: Func, closers: &[Tok]) -> Result<Expr, ParseError> {
        // `\sin^2 x`, `\log_2 8`.
        let mut power: Option<Expr> = None;
        let mut base: Option<Expr> = None;
        for _ in 0..2 {
            if self.peek() == Some(&Tok::Caret) {
                self.pos += 1;
                match self.exponent(closers)? {
                    Exponent::Value(v) => power = Some(v),
                    Exponent::Degree => return err("degree on a function"),
                }
            } else if self.peek() == Some(&Tok::Underscore) {
                self.pos += 1;
                base = Some(self.arg()?);
            }
        }
        let args: Vec<Expr> = if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            if self.eat(&Tok::RParen) {
                return err("no arguments");
            }
            let e = self.list(&[Tok::RParen])?;
            self.eat(&Tok::RParen);
            match e {
                Expr::List(v)
                    if matches!(
                        f,
                        Func::Gcd
                            | Func::Lcm
                            | Func::Max
                            | Func::Min
                            | Func::Binom
                            | Func::Log
                            | Func::Mod
                    ) =>
                {
                    v
                }
                e => vec![e],
            }
        } else if self.peek() == Some(&Tok::LBrace) {
            vec![self.group()?]
        } else {
            // `\sin 2x`: the argument runs over a product.
            let mut factors = vec![self.unary(closers)?];
            while self.starts_factor() && !matches!(self.peek(), Some(Tok::Func(_))) {
                factors.push(self.unary_no_sign(closers)?);
            }
            vec![make_product(factors)]
        };
        let mut args = args;
        if let Some(b) = base {
            if f == Func::Log && args.len() == 1 {
                args.push(b);
            }
        }
        let call = Expr::Func(f, args);
        Ok(match power {
            Some(p) => {
                // `\sin^{-1}` is arcsin.
                if matches!(&p, Expr::Neg(x) if matches!(&**x, Expr::Num(n) if n.value.is_one())) {
                    match call {
                        Expr::Func(Func::Sin, a) => Expr::Func(Func::Asin, a),
                        Expr::Func(Func::Cos, a) => Expr::Func(Func::Acos, a),
                        Expr::Func(Func::Tan, a) => Expr::Func(Func::Atan, a),
                        c => Expr::Pow(Box::new(c), Box::new(p)),
                    }
                } else {
                    Expr::Pow(Box::new(call), Box::new(p))
                }
            }
            None => call,
        })
    }

    fn environment(&mut self, env: &str) -> Result<Expr, ParseError> {
        let is_matrix = matches!(
            env,
            "pmatrix"
                | "bmatrix"
                | "Bmatrix"
                | "vmatrix"
                | "Vmatrix"
                | "matrix"
                | "smallmatrix"
                | "array"
        );
        let mut rows: Vec<Vec<Expr>> = Vec::new();
        let mut row: Vec<Expr> = Vec::new();
        let closers = [Tok::Amp, Tok::RowSep, Tok::EndEnv(env.to_string())];
        loop {
            match self.peek() {
                None => break,
                Some(Tok::EndEnv(e)) if e == env => {
                    self.pos += 1;
                    break;
                }
                Some(Tok::EndEnv(_)) => {
                    self.pos += 1;
                    break;
                }
                Some(Tok::Amp) => {
                    self.pos += 1;
                }
                Some(Tok::RowSep) => {
                    self.pos += 1;
                    if !row.is_empty() {
                        rows.push(std::mem::take(&mut row));
                    }
                }
                _ => {
                    let cell = self.list(&closers)?;
                    row.push(cell);
                }
            }
        }
        if !row.is_empty() {
            rows.push(row);
        }
        if rows.is_empty() {
            return err("empty environment");
        }
        if is_matrix {
            let width = rows[0].len();
            if rows.iter().any(|r| r.len() != width) {
                return err("ragged matrix");
            }
            if env == "vmatrix" {
                return err("determinants are not evaluated");
            }
            return Ok(Expr::Matrix(rows));
        }
        // align / cases / other: the rows as a list.
        let items: Vec<Expr> = rows.into_iter().flatten().collect();
        Ok(if items.len() == 1 {
            items.into_iter().next().expect("one")
        } else {
            Expr::List(items)
        })
    }
}

enum Exponent {
    Value(Expr),
    Degree,
}

fn letter_symbol(w: &str) -> Expr {
    match w {
        "e" => Expr::Const(Const::E),
        "i" => Expr::Const(Const::I),
        _ => Expr::Sym(w.to_string()),
    }
}

/// A numeric literal.
pub fn num_literal(s: &str) -> Result<Expr, ParseError> {
    let (value, places) =
        number::parse_decimal(s).ok_or_else(|| ParseError(format!("bad number {s}")))?;
    Ok(Expr::Num(Num {
        value,
        places,
        sig: number::significant_digits(s),
    }))
}

fn mixed(whole: Expr, num: Expr, den: Expr) -> Result<Expr, ParseError> {
    match (&whole, &num, &den) {
        (Expr::Num(w), Expr::Num(a), Expr::Num(b)) if !b.value.is_zero() => {
            if a.value >= b.value {
                // `3 4/2` is not a mixed number.
                return err("not a proper fraction");
            }
            Ok(Expr::num(&w.value + &a.value / &b.value))
        }
        _ => err("bad mixed number"),
    }
}

/// `0.\overline{54}` = 54/99; `0.1\overline{6}` = 1/6.
fn repeating_decimal(prefix: &str, rep: &Num) -> Option<Expr> {
    let rep_digits = rep.value.numer().to_string();
    if rep.places.is_some() || rep_digits.is_empty() {
        return None;
    }
    let (int_part, frac) = prefix.split_once('.').unwrap_or((prefix, ""));
    let base = number::parse_decimal(&format!("{int_part}.{frac}")).map(|(v, _)| v)?;
    let k = frac.len() as u32;
    let r = rep_digits.len() as u32;
    let rep_val = Rat::new(
        rep_digits.parse::<BigInt>().ok()?,
        (BigInt::from(10u32).pow(r) - BigInt::one()) * BigInt::from(10u32).pow(k),
    );
    Some(Expr::num(base + rep_val))
}

fn make_sum(mut terms: Vec<Expr>) -> Expr {
    if terms.len() == 1 {
        terms.pop().expect("one")
    } else if terms.is_empty() {
        Expr::int(0)
    } else {
        Expr::Add(terms)
    }
}

fn make_product(mut factors: Vec<Expr>) -> Expr {
    if factors.len() == 1 {
        factors.pop().expect("one")
    } else {
        Expr::Mul(factors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        parse(s, Thousands::Join)
            .map(|e| e.to_string())
            .unwrap_or_else(|e| format!("ERR {}", e.0))
    }

    #[test]
    fn basics() {
        assert_eq!(p("\\frac{1}{2}"), "(1)/(2)");
        assert_eq!(p("\\frac12"), "(1)/(2)");
        assert_eq!(p("\\frac3{3}"), "(3)/(3)");
        assert_eq!(p("2x^2"), "2*(x)^(2)");
        assert_eq!(p("-x^2"), "-(x)^(2)");
        assert_eq!(p("\\sqrt3"), "sqrt(3)");
        assert_eq!(p("\\sqrt[3]{x}"), "(x)^((1)/(3))");
        assert_eq!(p("3 \\pm 2\\sqrt{2}"), "3 +- 2*sqrt(2)");
        assert_eq!(p("(1,2]"), "(1, 2]");
        assert_eq!(p("[3, 5]"), "[3, 5]");
        assert_eq!(p("\\{1,2\\}"), "{1, 2}");
        assert_eq!(p("x \\in [-2,7]"), "x in [-2, 7]");
        assert_eq!(p("11 5/6"), "71/6");
        assert_eq!(p("2\\frac{1}{2}"), "5/2");
        assert_eq!(p("0.\\overline{54}"), "6/11");
        assert_eq!(p("204_5"), "204_5");
        assert_eq!(p("\\sin^2 x"), "(sin(x))^(2)");
        assert_eq!(p("\\text{Evelyn}"), "\"Evelyn\"");
        assert_eq!(p("odd"), "\"odd\"");
        assert_eq!(p("f(x)=2x"), "f(x) = 2*x");
        assert_eq!(p("-9>0"), "-9 > 0");
        assert_eq!(
            p("\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}"),
            "Matrix([[1, 2], [3, 4]])"
        );
        assert_eq!(p("6/13 - 5*p/26"), "((6)/(13) + -(5*p)/(26))");
        assert_eq!(
            p("(-\\infty, -3] \\cup [2, \\infty)"),
            "(-oo, -3] U [2, oo)"
        );
        assert_eq!(p("5:6"), ":(5, 6)");
        assert_eq!(p("1 2"), "ERR two numbers side by side");
        assert_eq!(p("{(b)}"), "b");
    }

    #[test]
    fn bounded() {
        let deep = "(".repeat(500) + "1" + &")".repeat(500);
        assert!(p(&deep).starts_with("ERR"));
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;
    #[test]
    fn fraction_of_letters() {
        let e = parse("\\frac{NO}{BO}=\\frac{1}{\\sqrt{6}}", Thousands::Join);
        assert!(e.is_ok(), "{e:?}");
        assert!(parse("1 - \\frac{1}{\\mathrm{e}}", Thousands::Join).is_ok());
    }
}
