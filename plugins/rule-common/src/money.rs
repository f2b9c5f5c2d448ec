//! Money arithmetic on integer minor units: basis-point percentages with commercial
//! rounding, and formatting of rates for labels.

/// `amount` x `basis_points` / 10000, rounded half away from zero. 1 basis point = 0.01%.
pub fn percent_of(amount: i64, basis_points: u32) -> i64 {
    let product = i128::from(amount) * i128::from(basis_points);
    let rounded = if product >= 0 {
        (product + 5_000) / 10_000
    } else {
        (product - 5_000) / 10_000
    };
    i64::try_from(rounded).unwrap_or(if rounded > 0 { i64::MAX } else { i64::MIN })
}

/// Basis points as a percentage for people: 1900 -> "19%", 725 -> "7.25%".
pub fn format_rate(basis_points: u32) -> String {
    let whole = basis_points / 100;
    match basis_points % 100 {
        0 => format!("{whole}%"),
        frac if frac % 10 == 0 => format!("{whole}.{}%", frac / 10),
        frac => format!("{whole}.{frac:02}%"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_away_from_zero() {
        assert_eq!(percent_of(1000, 1900), 190);
        assert_eq!(percent_of(5, 1000), 1); // 0.5 -> 1
        assert_eq!(percent_of(4, 1000), 0); // 0.4 -> 0
        assert_eq!(percent_of(-5, 1000), -1);
        assert_eq!(percent_of(i64::MAX, 10_000), i64::MAX);
    }

    #[test]
    fn formats_rates() {
        assert_eq!(format_rate(1900), "19%");
        assert_eq!(format_rate(725), "7.25%");
        assert_eq!(format_rate(550), "5.5%");
        assert_eq!(format_rate(5), "0.05%");
    }
}
