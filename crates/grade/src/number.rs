//! Exact numbers with bounded cost.
//!
//! Every operation that can grow a number (powers, factorials, products) checks the size of
//! its result first, so no input can make the grader compute `10^{10^{10}}` or `(10^6)!`.

use num_bigint::{BigInt, Sign};
use num_integer::Integer;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};

/// Exact rational number.
pub type Rat = BigRational;

/// Largest result, in bits of numerator plus denominator, any exact operation may produce.
pub const MAX_BITS: u64 = 1 << 16;
/// Largest `n` for which `n!` is computed exactly (5000! has about 54,000 bits).
pub const MAX_FACTORIAL: u64 = 5000;

/// Size of a rational in bits.
pub fn bits(r: &Rat) -> u64 {
    r.numer().bits() + r.denom().bits()
}

/// `Some(r)` if `r` is within [`MAX_BITS`].
pub fn bounded(r: Rat) -> Option<Rat> {
    (bits(&r) <= MAX_BITS).then_some(r)
}

pub fn int(n: i64) -> Rat {
    Rat::from_integer(BigInt::from(n))
}

/// `base^exp` exactly, if the result stays within bounds.
pub fn pow_int(base: &Rat, exp: &BigInt) -> Option<Rat> {
    if base.is_zero() {
        return if exp.sign() == Sign::Minus {
            None
        } else if exp.is_zero() {
            Some(Rat::one())
        } else {
            Some(Rat::zero())
        };
    }
    if base.abs() == Rat::one() {
        let odd = exp.is_odd();
        return Some(if base.is_negative() && odd {
            -Rat::one()
        } else {
            Rat::one()
        });
    }
    let e = exp.abs().to_u64()?;
    // Estimated size of the result.
    if bits(base).saturating_mul(e) > MAX_BITS {
        return None;
    }
    let e32 = u32::try_from(e).ok()?;
    let r = Rat::new(base.numer().pow(e32), base.denom().pow(e32));
    Some(if exp.sign() == Sign::Minus {
        r.recip()
    } else {
        r
    })
}

/// The exact `n`-th root of a non-negative rational, if it is rational.
pub fn exact_root(r: &Rat, n: u32) -> Option<Rat> {
    if n == 0 {
        return None;
    }
    if r.is_negative() {
        // Odd roots of negatives are real.
        if n % 2 == 1 {
            return exact_root(&-r, n).map(|x| -x);
        }
        return None;
    }
    let num = r.numer().nth_root(n);
    let den = r.denom().nth_root(n);
    if num.pow(n) == *r.numer() && den.pow(n) == *r.denom() {
        Some(Rat::new(num, den))
    } else {
        None
    }
}

/// `n!` for small non-negative integers.
pub fn factorial(n: &Rat) -> Option<Rat> {
    if !n.is_integer() || n.is_negative() {
        return None;
    }
    let n = n.to_integer().to_u64()?;
    if n > MAX_FACTORIAL {
        return None;
    }
    let mut acc = BigInt::one();
    for k in 2..=n {
        acc *= k;
    }
    Some(Rat::from_integer(acc))
}

/// Binomial coefficient for non-negative integer arguments.
pub fn binomial(n: &Rat, k: &Rat) -> Option<Rat> {
    if !n.is_integer() || !k.is_integer() || k.is_negative() {
        return None;
    }
    let n = n.to_integer();
    let k = k.to_integer();
    if k > n && !n.is_negative() {
        return Some(Rat::zero());
    }
    let k = k.to_u64()?;
    if k > MAX_FACTORIAL {
        return None;
    }
    let mut acc = BigInt::one();
    for i in 0..k {
        acc = acc * (&n - BigInt::from(i)) / BigInt::from(i + 1);
        if acc.bits() > MAX_BITS {
            return None;
        }
    }
    Some(Rat::from_integer(acc))
}

/// Converts to `f64`, keeping precision for huge numerators and denominators.
pub fn to_f64(r: &Rat) -> f64 {
    if let (Some(n), Some(d)) = (r.numer().to_f64(), r.denom().to_f64()) {
        if n.is_finite() && d.is_finite() && d != 0.0 {
            return n / d;
        }
    }
    // Scale both to ~64 significant bits.
    let nb = r.numer().bits() as i64;
    let db = r.denom().bits() as i64;
    let shift_n = (nb - 64).max(0);
    let shift_d = (db - 64).max(0);
    let n = (r.numer() >> shift_n as usize).to_f64().unwrap_or(f64::NAN);
    let d = (r.denom() >> shift_d as usize).to_f64().unwrap_or(f64::NAN);
    let e = shift_n - shift_d;
    let m = n / d;
    if e > 2000 {
        return if m > 0.0 {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
        };
    }
    if e < -2000 {
        return 0.0;
    }
    m * 2f64.powi(e as i32)
}

/// Parses a decimal literal such as `12`, `0.5`, `.25`, `3.` into an exact rational and its
/// number of written decimal places (`None` when there is no decimal point).
pub fn parse_decimal(s: &str) -> Option<(Rat, Option<u32>)> {
    let (int_part, frac_part) = match s.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    if int_part.is_empty() && frac_part.is_none_or(str::is_empty) {
        return None;
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac = frac_part.unwrap_or("");
    if !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 4000 || int_part.len() > 4000 {
        return None;
    }
    let digits = format!("{int_part}{frac}");
    let n: BigInt = if digits.is_empty() {
        BigInt::zero()
    } else {
        digits.parse().ok()?
    };
    let d = BigInt::from(10u32).pow(frac.len() as u32);
    let places = frac_part.map(|f| f.len() as u32);
    Some((Rat::new(n, d), places))
}

/// `10^-places` as a rational.
pub fn ulp(places: u32) -> Rat {
    Rat::new(BigInt::one(), BigInt::from(10u32).pow(places))
}

/// Rounds to `places` decimals, half away from zero.
pub fn round_to(r: &Rat, places: u32) -> Rat {
    let scale = Rat::from_integer(BigInt::from(10u32).pow(places));
    let x = r * &scale;
    let half = Rat::new(BigInt::one(), BigInt::from(2));
    let rounded = if x.is_negative() {
        -((-x + half).floor())
    } else {
        (x + half).floor()
    };
    rounded / scale
}

/// Number of significant decimal digits written in a decimal literal (e.g. `0.0375` -> 3).
pub fn significant_digits(literal: &str) -> u32 {
    let digits: String = literal.chars().filter(|c| c.is_ascii_digit()).collect();
    let trimmed = digits.trim_start_matches('0');
    trimmed.len() as u32
}

/// Greatest common divisor of two integers (as rationals).
pub fn gcd(a: &Rat, b: &Rat) -> Option<Rat> {
    if !a.is_integer() || !b.is_integer() {
        return None;
    }
    Some(Rat::from_integer(a.to_integer().gcd(&b.to_integer())))
}

/// Least common multiple of two integers (as rationals).
pub fn lcm(a: &Rat, b: &Rat) -> Option<Rat> {
    if !a.is_integer() || !b.is_integer() {
        return None;
    }
    bounded(Rat::from_integer(a.to_integer().lcm(&b.to_integer())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powers_are_bounded() {
        let ten = int(10);
        assert_eq!(pow_int(&ten, &BigInt::from(3)), Some(int(1000)));
        assert!(pow_int(&ten, &BigInt::from(10_000_000_000i64)).is_none());
        assert_eq!(
            pow_int(&int(-1), &BigInt::from(10_000_000_001i64)),
            Some(int(-1))
        );
        assert_eq!(
            pow_int(&int(2), &BigInt::from(-2)),
            Some(Rat::new(1.into(), 4.into()))
        );
        assert!(pow_int(&int(0), &BigInt::from(-1)).is_none());
    }

    #[test]
    fn roots_and_factorials() {
        assert_eq!(
            exact_root(&Rat::new(9.into(), 4.into()), 2),
            Some(Rat::new(3.into(), 2.into()))
        );
        assert_eq!(exact_root(&int(2), 2), None);
        assert_eq!(exact_root(&int(-8), 3), Some(int(-2)));
        assert_eq!(factorial(&int(5)), Some(int(120)));
        assert!(factorial(&int(1_000_000)).is_none());
        assert_eq!(binomial(&int(5), &int(2)), Some(int(10)));
        assert!(factorial(&int(2006)).is_some());
    }

    #[test]
    fn decimals() {
        assert_eq!(
            parse_decimal("0.5"),
            Some((Rat::new(1.into(), 2.into()), Some(1)))
        );
        assert_eq!(
            parse_decimal(".25"),
            Some((Rat::new(1.into(), 4.into()), Some(2)))
        );
        assert_eq!(parse_decimal("12"), Some((int(12), None)));
        assert_eq!(parse_decimal("."), None);
        assert_eq!(
            round_to(&Rat::new(2.into(), 3.into()), 2),
            Rat::new(67.into(), 100.into())
        );
        assert_eq!(round_to(&Rat::new((-5).into(), 2.into()), 0), int(-3));
        assert_eq!(significant_digits("0.0375"), 3);
        assert!((to_f64(&Rat::new(1.into(), BigInt::from(3).pow(2000))) - 0.0).abs() < 1e-300);
        let big = Rat::new(BigInt::from(7).pow(800) + 1, BigInt::from(7).pow(800));
        assert!((to_f64(&big) - 1.0).abs() < 1e-12);
    }
}
