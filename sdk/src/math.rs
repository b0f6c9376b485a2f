//! Float functions that `core` does not have (they live in `std`), for the
//! statistics functions tend to do. Same results on wasm32 and natively.

/// Square root (correctly rounded, via `libm`).
#[inline]
pub fn sqrt(x: f64) -> f64 {
    libm::sqrt(x)
}

/// Rounds to the nearest integer, halves away from zero.
#[inline]
pub fn round(x: f64) -> f64 {
    libm::round(x)
}

/// Rounds to `decimals` places (≤ 15), halves away from zero: for payloads
/// meant for people, `round_to(36.999999999999993, 2)` is `37.0`.
#[inline]
pub fn round_to(x: f64, decimals: u32) -> f64 {
    let mut scale = 1.0;
    for _ in 0..decimals.min(15) {
        scale *= 10.0;
    }
    round(x * scale) / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_roots() {
        assert_eq!(sqrt(9.0), 3.0);
        assert!(sqrt(-1.0).is_nan());
    }

    #[test]
    fn rounding() {
        assert_eq!(round_to(36.999_999_999_999_99, 2), 37.0);
        assert_eq!(round_to(-1.234_5, 3), -1.235);
        assert_eq!(round(2.5), 3.0);
        assert_eq!(round(-2.5), -3.0);
    }
}
