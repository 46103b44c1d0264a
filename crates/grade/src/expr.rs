//! The answer syntax tree shared by the parser, the evaluator and the equivalence checker.

use crate::number::Rat;
use std::fmt;

/// A number as written: its exact value and, for decimal literals, how many places were written
/// (`0.50` -> `Some(2)`), which is what the decimal-precision rule needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Num {
    pub value: Rat,
    pub places: Option<u32>,
    /// Significant digits written (for decimals).
    pub sig: u32,
}

/// Named constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Const {
    Pi,
    E,
    I,
    Infinity,
}

/// Functions the evaluator knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Func {
    Sin,
    Cos,
    Tan,
    Sec,
    Csc,
    Cot,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Tanh,
    Ln,
    /// `\log` (natural, as sympy reads it) or `\log_b` with the base as second argument.
    Log,
    Exp,
    Sqrt,
    Abs,
    Floor,
    Ceil,
    Gcd,
    Lcm,
    Binom,
    Max,
    Min,
    Mod,
}

impl Func {
    /// Looks up a function by its (LaTeX or Python) name.
    pub fn from_name(name: &str) -> Option<Func> {
        Some(match name {
            "sin" => Func::Sin,
            "cos" => Func::Cos,
            "tan" | "tg" => Func::Tan,
            "sec" => Func::Sec,
            "csc" | "cosec" => Func::Csc,
            "cot" | "ctg" => Func::Cot,
            "arcsin" | "asin" => Func::Asin,
            "arccos" | "acos" => Func::Acos,
            "arctan" | "atan" => Func::Atan,
            "sinh" => Func::Sinh,
            "cosh" => Func::Cosh,
            "tanh" => Func::Tanh,
            "ln" => Func::Ln,
            "log" | "lg" => Func::Log,
            "exp" => Func::Exp,
            "sqrt" => Func::Sqrt,
            "abs" => Func::Abs,
            "floor" => Func::Floor,
            "ceil" | "ceiling" => Func::Ceil,
            "gcd" => Func::Gcd,
            "lcm" => Func::Lcm,
            "binom" | "binomial" | "choose" => Func::Binom,
            "max" => Func::Max,
            "min" => Func::Min,
            "mod" => Func::Mod,
            _ => return None,
        })
    }
}

/// Relation operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Approx,
}

impl RelOp {
    pub fn symbol(self) -> &'static str {
        match self {
            RelOp::Eq => "=",
            RelOp::Ne => "!=",
            RelOp::Lt => "<",
            RelOp::Le => "<=",
            RelOp::Gt => ">",
            RelOp::Ge => ">=",
            RelOp::Approx => "~=",
        }
    }
    /// The same relation with its sides swapped (`<` becomes `>`).
    pub fn flipped(self) -> RelOp {
        match self {
            RelOp::Lt => RelOp::Gt,
            RelOp::Le => RelOp::Ge,
            RelOp::Gt => RelOp::Lt,
            RelOp::Ge => RelOp::Le,
            other => other,
        }
    }
}

/// A parsed answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Num(Num),
    Const(Const),
    /// A variable: `x`, `x_1`, `alpha`, `f'`.
    Sym(String),
    Add(Vec<Expr>),
    Mul(Vec<Expr>),
    Neg(Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Pow(Box<Expr>, Box<Expr>),
    Func(Func, Vec<Expr>),
    /// An unknown function applied to arguments: `f(x)`.
    Apply(String, Vec<Expr>),
    Factorial(Box<Expr>),
    Percent(Box<Expr>),
    Degree(Box<Expr>),
    /// `a \pm b` (with `a` = 0 for a leading `\pm`).
    PlusMinus(Box<Expr>, Box<Expr>),
    /// A chain of relations: `a < b <= c` is `Rel([a, b, c], [Lt, Le])`.
    Rel(Vec<Expr>, Vec<RelOp>),
    /// `x \in S`.
    In(Box<Expr>, Box<Expr>),
    /// `( ... )` with two or more items: a tuple, or an open interval.
    Paren(Vec<Expr>),
    /// `[ ... ]`: a closed interval or a (Python) list.
    Bracket(Vec<Expr>),
    /// An interval with mixed brackets: `(a, b]`, `[a, b)`.
    Interval {
        lo: Box<Expr>,
        hi: Box<Expr>,
        lo_closed: bool,
        hi_closed: bool,
    },
    /// `\{ ... \}`.
    Set(Vec<Expr>),
    /// A bare list `a, b, c` (also `a and b`).
    List(Vec<Expr>),
    Union(Vec<Expr>),
    Intersection(Vec<Expr>),
    Matrix(Vec<Vec<Expr>>),
    /// Words (a text answer such as `Evelyn`, `odd`, `True`).
    Text(String),
    /// A number in another base: `204_5`.
    Based(String, u32),
}

impl Expr {
    pub fn num(value: Rat) -> Expr {
        Expr::Num(Num {
            value,
            places: None,
            sig: 0,
        })
    }
    pub fn int(n: i64) -> Expr {
        Expr::num(crate::number::int(n))
    }
    pub fn is_container(&self) -> bool {
        matches!(
            self,
            Expr::Paren(_)
                | Expr::Bracket(_)
                | Expr::Set(_)
                | Expr::List(_)
                | Expr::Interval { .. }
                | Expr::Union(_)
                | Expr::Intersection(_)
                | Expr::Matrix(_)
        )
    }
    /// Number of nodes (used to bound work).
    pub fn size(&self) -> usize {
        let mut n = 0;
        self.walk(&mut |_| n += 1);
        n
    }
    /// Visits every node.
    pub fn walk(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Add(v)
            | Expr::Mul(v)
            | Expr::Func(_, v)
            | Expr::Apply(_, v)
            | Expr::Rel(v, _)
            | Expr::Paren(v)
            | Expr::Bracket(v)
            | Expr::Set(v)
            | Expr::List(v)
            | Expr::Union(v)
            | Expr::Intersection(v) => v.iter().for_each(|e| e.walk(f)),
            Expr::Neg(a) | Expr::Factorial(a) | Expr::Percent(a) | Expr::Degree(a) => a.walk(f),
            Expr::Div(a, b) | Expr::Pow(a, b) | Expr::PlusMinus(a, b) | Expr::In(a, b) => {
                a.walk(f);
                b.walk(f);
            }
            Expr::Interval { lo, hi, .. } => {
                lo.walk(f);
                hi.walk(f);
            }
            Expr::Matrix(rows) => rows.iter().flatten().for_each(|e| e.walk(f)),
            Expr::Num(_) | Expr::Const(_) | Expr::Sym(_) | Expr::Text(_) | Expr::Based(..) => {}
        }
    }
    /// The free variables, sorted and deduplicated.
    pub fn symbols(&self) -> Vec<String> {
        let mut v = Vec::new();
        self.walk(&mut |e| {
            if let Expr::Sym(s) = e {
                v.push(s.clone());
            }
        });
        v.sort();
        v.dedup();
        v
    }
}

fn join(f: &mut fmt::Formatter<'_>, items: &[Expr], sep: &str) -> fmt::Result {
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        write!(f, "{e}")?;
    }
    Ok(())
}

/// A compact, sympy-like rendering used in verdict reasons.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Num(n) => {
                if let Some(p) = n.places {
                    write!(f, "{}", crate::number::to_f64(&n.value))?;
                    if p > 0 && n.value.is_integer() {
                        f.write_str(".0")?;
                    }
                    Ok(())
                } else if n.value.is_integer() {
                    write!(f, "{}", n.value.numer())
                } else {
                    write!(f, "{}/{}", n.value.numer(), n.value.denom())
                }
            }
            Expr::Const(c) => f.write_str(match c {
                Const::Pi => "pi",
                Const::E => "E",
                Const::I => "I",
                Const::Infinity => "oo",
            }),
            Expr::Sym(s) => f.write_str(s),
            Expr::Add(v) => {
                f.write_str("(")?;
                join(f, v, " + ")?;
                f.write_str(")")
            }
            Expr::Mul(v) => join(f, v, "*"),
            Expr::Neg(a) => write!(f, "-{a}"),
            Expr::Div(a, b) => write!(f, "({a})/({b})"),
            Expr::Pow(a, b) => write!(f, "({a})^({b})"),
            Expr::Func(func, args) => {
                write!(f, "{}(", format!("{func:?}").to_lowercase())?;
                join(f, args, ", ")?;
                f.write_str(")")
            }
            Expr::Apply(name, args) => {
                write!(f, "{name}(")?;
                join(f, args, ", ")?;
                f.write_str(")")
            }
            Expr::Factorial(a) => write!(f, "({a})!"),
            Expr::Percent(a) => write!(f, "{a}%"),
            Expr::Degree(a) => write!(f, "{a} deg"),
            Expr::PlusMinus(a, b) => write!(f, "{a} +- {b}"),
            Expr::Rel(v, ops) => {
                for (i, e) in v.iter().enumerate() {
                    if i > 0 {
                        write!(f, " {} ", ops[i - 1].symbol())?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
            Expr::In(a, b) => write!(f, "{a} in {b}"),
            Expr::Paren(v) => {
                f.write_str("(")?;
                join(f, v, ", ")?;
                f.write_str(")")
            }
            Expr::Bracket(v) => {
                f.write_str("[")?;
                join(f, v, ", ")?;
                f.write_str("]")
            }
            Expr::Interval {
                lo,
                hi,
                lo_closed,
                hi_closed,
            } => write!(
                f,
                "{}{lo}, {hi}{}",
                if *lo_closed { "[" } else { "(" },
                if *hi_closed { "]" } else { ")" }
            ),
            Expr::Set(v) => {
                f.write_str("{")?;
                join(f, v, ", ")?;
                f.write_str("}")
            }
            Expr::List(v) => join(f, v, ", "),
            Expr::Union(v) => join(f, v, " U "),
            Expr::Intersection(v) => join(f, v, " n "),
            Expr::Matrix(rows) => {
                f.write_str("Matrix([")?;
                for (i, r) in rows.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str("[")?;
                    join(f, r, ", ")?;
                    f.write_str("]")?;
                }
                f.write_str("])")
            }
            Expr::Text(t) => write!(f, "\"{t}\""),
            Expr::Based(d, b) => write!(f, "{d}_{b}"),
        }
    }
}
