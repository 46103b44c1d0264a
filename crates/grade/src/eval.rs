//! Evaluating answers: exactly (bounded rationals) when possible, numerically (complex `f64`)
//! otherwise. All work is metered by [`Fuel`].

use crate::expr::{Const, Expr, Func};
use crate::number::{self, Rat};
use num_complex::Complex64;
use num_traits::{One, Signed, ToPrimitive, Zero};

/// A work budget. Every evaluated node costs one unit, big-number work costs more; when it runs
/// out, evaluation gives up (returns `None`) instead of running on.
#[derive(Clone, Debug)]
pub struct Fuel(pub i64);

impl Fuel {
    pub fn take(&mut self, n: i64) -> Option<()> {
        self.0 -= n;
        (self.0 >= 0).then_some(())
    }
}

/// The exact rational value of a constant expression, if it has one.
pub fn exact(e: &Expr, fuel: &mut Fuel) -> Option<Rat> {
    fuel.take(1)?;
    let r = match e {
        Expr::Num(n) => n.value.clone(),
        Expr::Neg(a) => -exact(a, fuel)?,
        Expr::Add(v) => {
            let mut acc = Rat::zero();
            for t in v {
                acc += exact(t, fuel)?;
                fuel.take((number::bits(&acc) / 256) as i64)?;
            }
            number::bounded(acc)?
        }
        Expr::Mul(v) => {
            let mut acc = Rat::one();
            for t in v {
                let x = exact(t, fuel)?;
                fuel.take(((number::bits(&acc) + number::bits(&x)) / 256) as i64)?;
                acc = number::bounded(acc * x)?;
            }
            acc
        }
        Expr::Div(a, b) => {
            let d = exact(b, fuel)?;
            if d.is_zero() {
                return None;
            }
            number::bounded(exact(a, fuel)? / d)?
        }
        Expr::Pow(b, x) => {
            let base = exact(b, fuel)?;
            let ex = exact(x, fuel)?;
            exact_pow(&base, &ex, fuel)?
        }
        Expr::Percent(a) => exact(a, fuel)? / Rat::from_integer(100.into()),
        Expr::Degree(a) => exact(a, fuel)?,
        Expr::Factorial(a) => {
            let n = exact(a, fuel)?;
            fuel.take(
                n.to_integer()
                    .to_i64()
                    .unwrap_or(i64::MAX / 4)
                    .clamp(0, 1 << 20)
                    / 8,
            )?;
            number::factorial(&n)?
        }
        Expr::Func(f, args) => exact_func(*f, args, fuel)?,
        Expr::Based(digits, base) => {
            let v = num_bigint::BigInt::parse_bytes(digits.as_bytes(), *base)?;
            Rat::from_integer(v)
        }
        _ => return None,
    };
    Some(r)
}

fn exact_pow(base: &Rat, ex: &Rat, fuel: &mut Fuel) -> Option<Rat> {
    if ex.is_integer() {
        let e = ex.to_integer();
        let cost = (number::bits(base) as i64)
            .saturating_mul(e.to_i64().unwrap_or(i64::MAX / 4).abs().min(1 << 30))
            / 512;
        fuel.take(cost)?;
        return number::pow_int(base, &e);
    }
    // Rational exponent p/q: exact when base^(1/q) is rational.
    let q = ex.denom().to_u32()?;
    if q > 64 {
        return None;
    }
    let root = number::exact_root(base, q)?;
    let p = ex.numer().clone();
    number::pow_int(&root, &p)
}

fn exact_func(f: Func, args: &[Expr], fuel: &mut Fuel) -> Option<Rat> {
    let a = |i: usize, fuel: &mut Fuel| -> Option<Rat> { exact(args.get(i)?, fuel) };
    Some(match f {
        Func::Sqrt => number::exact_root(&a(0, fuel)?, 2)?,
        Func::Abs => a(0, fuel)?.abs(),
        Func::Floor => a(0, fuel)?.floor(),
        Func::Ceil => a(0, fuel)?.ceil(),
        Func::Gcd => number::gcd(&a(0, fuel)?, &a(1, fuel)?)?,
        Func::Lcm => number::lcm(&a(0, fuel)?, &a(1, fuel)?)?,
        Func::Binom => number::binomial(&a(0, fuel)?, &a(1, fuel)?)?,
        Func::Max | Func::Min => {
            let mut vals = Vec::new();
            for i in 0..args.len() {
                vals.push(a(i, fuel)?);
            }
            let it = vals.into_iter();
            if f == Func::Max {
                it.max()?
            } else {
                it.min()?
            }
        }
        Func::Mod => {
            let x = a(0, fuel)?;
            let m = a(1, fuel)?;
            if m.is_zero() || !x.is_integer() || !m.is_integer() {
                return None;
            }
            let r = x.to_integer() % m.to_integer();
            let r = if r.is_negative() {
                r + m.to_integer().abs()
            } else {
                r
            };
            Rat::from_integer(r)
        }
        Func::Exp | Func::Ln | Func::Log => {
            let x = a(0, fuel)?;
            match f {
                Func::Exp if x.is_zero() => Rat::one(),
                Func::Ln if x.is_one() => Rat::zero(),
                Func::Log if x.is_one() => Rat::zero(),
                Func::Log if args.len() == 2 => {
                    // log_b(x) is rational when x = b^k for small integer k.
                    let b = a(1, fuel)?;
                    if b <= Rat::zero() || b.is_one() || x <= Rat::zero() {
                        return None;
                    }
                    for k in -64i64..=64 {
                        if number::pow_int(&b, &k.into()).as_ref() == Some(&x) {
                            return Some(number::int(k));
                        }
                    }
                    return None;
                }
                _ => return None,
            }
        }
        // f(0) for the functions where it is rational.
        Func::Sin | Func::Tan | Func::Asin | Func::Atan | Func::Sinh | Func::Tanh => {
            a(0, fuel)?.is_zero().then(Rat::zero)?
        }
        Func::Cos | Func::Cosh | Func::Sec => a(0, fuel)?.is_zero().then(Rat::one)?,
        _ => return None,
    })
}

/// Values for free variables during numeric evaluation.
pub trait Env {
    fn get(&self, name: &str) -> Option<Complex64>;
}

impl Env for () {
    fn get(&self, _: &str) -> Option<Complex64> {
        None
    }
}

impl Env for Vec<(String, Complex64)> {
    fn get(&self, name: &str) -> Option<Complex64> {
        self.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

fn real(x: f64) -> Complex64 {
    Complex64::new(x, 0.0)
}

fn real_part(z: Complex64) -> Option<f64> {
    (z.im.abs() <= 1e-12 * z.re.abs().max(1.0)).then_some(z.re)
}

/// The value of an expression as a complex number. `None` when it has none (unknown names,
/// infinities, domain errors, or fuel exhausted).
pub fn numeric(e: &Expr, env: &dyn Env, fuel: &mut Fuel) -> Option<Complex64> {
    fuel.take(1)?;
    let v = match e {
        Expr::Num(n) => real(number::to_f64(&n.value)),
        Expr::Const(c) => match c {
            Const::Pi => real(std::f64::consts::PI),
            Const::E => real(std::f64::consts::E),
            Const::I => Complex64::i(),
            Const::Infinity => return None,
        },
        Expr::Sym(s) => env.get(s)?,
        Expr::Neg(a) => -numeric(a, env, fuel)?,
        Expr::Add(v) => {
            let mut acc = Complex64::zero();
            for t in v {
                acc += numeric(t, env, fuel)?;
            }
            acc
        }
        Expr::Mul(v) => {
            let mut acc = Complex64::one();
            for t in v {
                acc *= numeric(t, env, fuel)?;
            }
            acc
        }
        Expr::Div(a, b) => {
            let d = numeric(b, env, fuel)?;
            if d.norm() == 0.0 {
                return None;
            }
            numeric(a, env, fuel)? / d
        }
        Expr::Pow(b, x) => {
            let base = numeric(b, env, fuel)?;
            // Integer exponents: exact repeated multiplication keeps real bases real.
            if let Some(k) = int_exponent(x, fuel) {
                if k.abs() <= 1 << 20 {
                    if base.norm() == 0.0 && k < 0 {
                        return None;
                    }
                    return finite(base.powi(k as i32));
                }
            }
            let ex = numeric(x, env, fuel)?;
            // Real odd roots of negative reals (`\sqrt[3]{-8}` = -2, as in real-domain answers).
            if let (Some(br), Some(xr)) = (real_part(base), real_part(ex)) {
                if br < 0.0 {
                    if let Some(q) = odd_denominator(x, fuel) {
                        let mag = (-br).powf(xr);
                        let p = (xr * q as f64).round() as i64;
                        return finite(real(if p % 2 == 0 { mag } else { -mag }));
                    }
                }
            }
            if base.norm() == 0.0 {
                return if ex.re > 0.0 {
                    Some(Complex64::zero())
                } else {
                    None
                };
            }
            base.powc(ex)
        }
        Expr::Percent(a) => numeric(a, env, fuel)? / 100.0,
        Expr::Degree(a) => numeric(a, env, fuel)?,
        Expr::Factorial(a) => {
            let x = real_part(numeric(a, env, fuel)?)?;
            real(gamma(x + 1.0)?)
        }
        Expr::Func(f, args) => {
            let mut vals = Vec::with_capacity(args.len());
            for a in args {
                vals.push(numeric(a, env, fuel)?);
            }
            func(*f, &vals)?
        }
        Expr::Apply(name, args) => {
            // An unknown function: a fixed, name-dependent smooth function, so that `f(2)` and
            // `f(2)` agree and `f(2)`, `f(3)` differ.
            let seed = name
                .bytes()
                .fold(7u32, |h, c| h.wrapping_mul(31).wrapping_add(c as u32))
                % 97;
            let mut acc = real(seed as f64 / 13.0 + 0.5);
            for a in args {
                let z = numeric(a, env, fuel)?;
                acc = (acc * 1.37 + z).sin() + z * 0.29;
            }
            acc
        }
        Expr::Based(..) => real(number::to_f64(&exact(e, fuel)?)),
        _ => return None,
    };
    finite(v)
}

fn finite(z: Complex64) -> Option<Complex64> {
    (z.re.is_finite() && z.im.is_finite()).then_some(z)
}

fn int_exponent(x: &Expr, fuel: &mut Fuel) -> Option<i64> {
    let r = exact(x, fuel)?;
    if r.is_integer() {
        r.to_integer().to_i64()
    } else {
        None
    }
}

fn odd_denominator(x: &Expr, fuel: &mut Fuel) -> Option<u32> {
    let r = exact(x, fuel)?;
    let q = r.denom().to_u32()?;
    (q % 2 == 1 && q > 1).then_some(q)
}

fn func(f: Func, v: &[Complex64]) -> Option<Complex64> {
    let x = *v.first()?;
    let re = |z: Complex64| real_part(z);
    Some(match f {
        Func::Sin => x.sin(),
        Func::Cos => x.cos(),
        Func::Tan => x.tan(),
        Func::Sec => x.cos().inv(),
        Func::Csc => x.sin().inv(),
        Func::Cot => x.tan().inv(),
        Func::Asin => x.asin(),
        Func::Acos => x.acos(),
        Func::Atan => x.atan(),
        Func::Sinh => x.sinh(),
        Func::Cosh => x.cosh(),
        Func::Tanh => x.tanh(),
        Func::Ln => {
            if x.norm() == 0.0 {
                return None;
            }
            x.ln()
        }
        Func::Log => {
            if x.norm() == 0.0 {
                return None;
            }
            match v.get(1) {
                Some(b) => {
                    let lb = b.ln();
                    if lb.norm() == 0.0 {
                        return None;
                    }
                    x.ln() / lb
                }
                None => x.ln(),
            }
        }
        Func::Exp => x.exp(),
        Func::Sqrt => {
            // Principal square root; negative reals give imaginary values as in sympy.
            x.sqrt()
        }
        Func::Abs => real(x.norm()),
        Func::Floor => real(re(x)?.floor()),
        Func::Ceil => real(re(x)?.ceil()),
        Func::Max | Func::Min => {
            let mut best = re(x)?;
            for z in &v[1..] {
                let r = re(*z)?;
                best = if f == Func::Max {
                    best.max(r)
                } else {
                    best.min(r)
                };
            }
            real(best)
        }
        Func::Gcd | Func::Lcm | Func::Binom | Func::Mod => {
            let a = re(x)?;
            let b = re(*v.get(1)?)?;
            match f {
                Func::Mod => {
                    if b == 0.0 {
                        return None;
                    }
                    real(a.rem_euclid(b))
                }
                Func::Binom => real(gamma(a + 1.0)? / (gamma(b + 1.0)? * gamma(a - b + 1.0)?)),
                _ => return None,
            }
        }
    })
}

/// The gamma function for real arguments (Lanczos approximation).
pub fn gamma(x: f64) -> Option<f64> {
    if x <= 0.0 && x.fract() == 0.0 {
        return None;
    }
    if x > 171.0 {
        return None;
    }
    if x < 0.5 {
        let s = (std::f64::consts::PI * x).sin();
        return Some(std::f64::consts::PI / (s * gamma(1.0 - x)?));
    }
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    Some((2.0 * std::f64::consts::PI).sqrt() * t.powf(x + 0.5) * (-t).exp() * a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexer::Thousands;
    use crate::parser::parse;

    fn ex(s: &str) -> Option<Rat> {
        exact(&parse(s, Thousands::Join).unwrap(), &mut Fuel(100_000))
    }
    fn nv(s: &str) -> Option<f64> {
        numeric(&parse(s, Thousands::Join).unwrap(), &(), &mut Fuel(100_000)).map(|z| z.re)
    }

    #[test]
    fn exact_values() {
        assert_eq!(ex("\\frac{1}{3}+\\frac{2}{3}"), Some(number::int(1)));
        assert_eq!(ex("2^{10}"), Some(number::int(1024)));
        assert_eq!(ex("\\sqrt{16}"), Some(number::int(4)));
        assert_eq!(ex("\\sqrt{2}"), None);
        assert_eq!(ex("8^{2/3}"), Some(number::int(4)));
        assert_eq!(ex("5!"), Some(number::int(120)));
        assert_eq!(ex("28\\%"), Some(Rat::new(7.into(), 25.into())));
        assert_eq!(ex("\\log_2 8"), Some(number::int(3)));
        assert_eq!(ex("10^{10^{10}}"), None);
        assert_eq!(ex("(10^{6})!"), None);
        assert!(ex("\\frac{1}{2006!}").is_some());
    }

    #[test]
    fn numeric_values() {
        assert!((nv("\\sqrt{2}").unwrap() - 2f64.sqrt()).abs() < 1e-15);
        assert!((nv("\\sqrt[3]{-8}").unwrap() + 2.0).abs() < 1e-12);
        assert!((nv("\\pi r").is_none()));
        assert!((nv("\\sin(\\pi/2)").unwrap() - 1.0).abs() < 1e-12);
        assert!((gamma(5.0).unwrap() - 24.0).abs() < 1e-9);
    }

    #[test]
    fn fuel_bounds_work() {
        let e = parse("2^{2^{2^{2^{2^{2}}}}}", Thousands::Join).unwrap();
        assert_eq!(exact(&e, &mut Fuel(10_000)), None);
    }
}
