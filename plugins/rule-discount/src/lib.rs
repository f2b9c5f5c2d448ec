//! rule-discount: volume discount tiers by units bought, and coupon codes, all from config.
//! Discounts apply to the net amount (subtotal less earlier discounts), in this order:
//! the volume tier, then each coupon as entered; they never take the net amount below 0.

use rule_common::money::{format_rate, percent_of};
use rule_common::{
    Adjustment, AdjustmentKind, ChainContext, Config, Order, Outcome, PluginInfo, Rule, reason,
};

/// The discount rule.
pub struct Discount;

/// What a coupon takes off.
#[derive(Debug, Clone, PartialEq)]
pub enum CouponValue {
    /// A percentage of the net amount, in basis points (1000 = 10%).
    Percent(u32),
    /// A fixed amount in minor units, only for orders in `currency`.
    Fixed { amount: i64, currency: String },
}

/// Parsed config of rule-discount.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// (minimum units, basis points), ascending (`tiers = "10:500,50:1000"`).
    pub tiers: Vec<(u64, u32)>,
    /// Upper-cased code -> value (`coupons = "SAVE10:percent:1000,WELCOME5:fixed:500:EUR"`).
    pub coupons: Vec<(String, CouponValue)>,
    /// Reject orders with an unknown coupon (`unknown-coupon = reject`, the default) or
    /// ignore the coupon (`ignore`).
    pub reject_unknown: bool,
    /// Most coupons one order may use (`max-coupons`, default 1).
    pub max_coupons: usize,
}

impl Rule for Discount {
    type Settings = Settings;

    fn info() -> PluginInfo {
        rule_common::plugin_info!()
    }

    fn settings(config: &mut Config) -> Result<Settings, String> {
        let mut tiers = Vec::new();
        for (units, bp) in config.pairs::<u32>("tiers", "basis points (1000 = 10%)")? {
            let units = units.parse::<u64>().map_err(|_| {
                format!("config key `tiers`: `{units}` is not a whole number of units")
            })?;
            if bp > 10_000 {
                return Err(format!(
                    "config key `tiers`: {bp} basis points is more than 100%"
                ));
            }
            tiers.push((units, bp));
        }
        tiers.sort_unstable();
        let coupons = config
            .list("coupons")
            .iter()
            .map(|spec| parse_coupon(spec))
            .collect::<Result<_, _>>()?;
        let reject_unknown = match config.take("unknown-coupon").as_deref() {
            None | Some("reject") => true,
            Some("ignore") => false,
            Some(other) => {
                return Err(format!(
                    "config key `unknown-coupon`: expected `reject` or `ignore`, got `{other}`"
                ));
            }
        };
        Ok(Settings {
            tiers,
            coupons,
            reject_unknown,
            max_coupons: config.parse_or("max-coupons", 1, "a whole number")?,
        })
    }

    fn decide(order: &Order, context: &ChainContext, settings: &Settings) -> Outcome {
        let mut out = Discounts {
            net: context
                .totals
                .subtotal
                .saturating_sub(context.totals.discounts),
            adjustments: Vec::new(),
        };

        let units: u64 = order.lines.iter().map(|l| u64::from(l.quantity)).sum();
        if let Some((min_units, bp)) = settings.tiers.iter().rev().find(|(min, _)| units >= *min) {
            let label = format!("volume discount {} ({min_units}+ units)", format_rate(*bp));
            out.percent(label, *bp);
        }

        let mut codes: Vec<String> = Vec::new();
        for code in &order.coupon_codes {
            let code = code.to_uppercase();
            if !codes.contains(&code) {
                codes.push(code);
            }
        }
        let mut used = 0;
        for code in codes {
            let Some((_, value)) = settings.coupons.iter().find(|(c, _)| *c == code) else {
                if settings.reject_unknown {
                    return rule_common::reject(
                        "unknown-coupon",
                        format!("coupon_codes: `{code}` is not a valid coupon code"),
                    );
                }
                continue;
            };
            used += 1;
            if used > settings.max_coupons {
                return rule_common::reject(
                    "too-many-coupons",
                    format!(
                        "coupon_codes: at most {} coupon(s) per order",
                        settings.max_coupons
                    ),
                );
            }
            match value {
                CouponValue::Percent(bp) => {
                    let label = format!("coupon {code} ({})", format_rate(*bp));
                    out.percent(label, *bp);
                }
                CouponValue::Fixed { amount, currency } if *currency == order.currency => {
                    out.take(format!("coupon {code}"), *amount);
                }
                CouponValue::Fixed { currency, .. } => {
                    return Outcome::Reject(vec![reason(
                        "coupon-currency-mismatch",
                        format!(
                            "coupon_codes: `{code}` is only valid for orders in {currency}, this order is in {}",
                            order.currency
                        ),
                    )]);
                }
            }
        }
        Outcome::Accept(out.adjustments)
    }
}

/// Discounts taken so far and the net amount they leave.
struct Discounts {
    net: i64,
    adjustments: Vec<Adjustment>,
}

impl Discounts {
    /// Takes `amount` off, capped so that the net amount stays >= 0.
    fn take(&mut self, label: String, amount: i64) {
        let amount = amount.clamp(0, self.net.max(0));
        if amount > 0 {
            self.net -= amount;
            self.adjustments.push(Adjustment {
                kind: AdjustmentKind::Discount,
                label,
                amount,
            });
        }
    }

    /// Takes `basis_points` of the current net amount off.
    fn percent(&mut self, label: String, basis_points: u32) {
        self.take(label, percent_of(self.net, basis_points));
    }
}

rule_common::export_rule!(Discount);

fn parse_coupon(spec: &str) -> Result<(String, CouponValue), String> {
    let bad = || {
        format!(
            "config key `coupons`: `{spec}` is not CODE:percent:BASIS_POINTS or CODE:fixed:AMOUNT:CURRENCY"
        )
    };
    let parts: Vec<&str> = spec.split(':').map(str::trim).collect();
    let value = match parts.as_slice() {
        [_, "percent", bp] => {
            let bp: u32 = bp.parse().map_err(|_| bad())?;
            if bp > 10_000 {
                return Err(format!("config key `coupons`: `{spec}` is more than 100%"));
            }
            CouponValue::Percent(bp)
        }
        [_, "fixed", amount, currency] => CouponValue::Fixed {
            amount: amount
                .parse()
                .ok()
                .filter(|a: &i64| *a >= 0)
                .ok_or_else(bad)?,
            currency: currency.to_string(),
        },
        _ => return Err(bad()),
    };
    match parts[0] {
        "" => Err(bad()),
        code => Ok((code.to_uppercase(), value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rule_common::testing::{context, order, settings};

    const CONFIG: [(&str, &str); 2] = [
        ("tiers", "10:500, 50:1000"),
        ("coupons", "SAVE10:percent:1000, WELCOME5:fixed:500:EUR"),
    ];

    fn decide(o: &Order, pairs: &[(&str, &str)]) -> Outcome {
        Discount::decide(o, &context(o), &settings::<Discount>(pairs).unwrap())
    }

    fn amounts(outcome: Outcome) -> Vec<(String, i64)> {
        match outcome {
            Outcome::Accept(adjs) => adjs.into_iter().map(|a| (a.label, a.amount)).collect(),
            other => panic!("expected accept, got {other:?}"),
        }
    }

    fn reject_code(outcome: Outcome) -> String {
        match outcome {
            Outcome::Reject(reasons) => reasons[0].code.clone(),
            other => panic!("expected reject, got {other:?}"),
        }
    }

    #[test]
    fn no_tier_no_coupon_no_adjustment() {
        assert!(amounts(decide(&order("EUR", &[("a", 9, 100)]), &CONFIG)).is_empty());
    }

    #[test]
    fn highest_tier_reached_applies() {
        let got = amounts(decide(
            &order("EUR", &[("a", 30, 100), ("b", 20, 100)]),
            &CONFIG,
        ));
        assert_eq!(got, [("volume discount 10% (50+ units)".to_string(), 500)]);
    }

    #[test]
    fn coupons_stack_on_the_net_amount() {
        let mut o = order("EUR", &[("a", 10, 1000)]);
        o.coupon_codes = vec!["save10".into()];
        let got = amounts(decide(&o, &CONFIG));
        // 10000 - 5% = 9500, then 10% of 9500.
        assert_eq!(
            got,
            [
                ("volume discount 5% (10+ units)".into(), 500),
                ("coupon SAVE10 (10%)".into(), 950)
            ]
        );
    }

    #[test]
    fn fixed_coupon_is_capped_and_currency_bound() {
        let mut o = order("EUR", &[("a", 1, 300)]);
        o.coupon_codes = vec!["WELCOME5".into()];
        assert_eq!(
            amounts(decide(&o, &CONFIG)),
            [("coupon WELCOME5".into(), 300)]
        );
        o.currency = "USD".into();
        assert_eq!(reject_code(decide(&o, &CONFIG)), "coupon-currency-mismatch");
    }

    #[test]
    fn unknown_and_too_many_coupons() {
        let mut o = order("EUR", &[("a", 1, 300)]);
        o.coupon_codes = vec!["NOPE".into()];
        assert_eq!(reject_code(decide(&o, &CONFIG)), "unknown-coupon");
        let mut ignore = CONFIG.to_vec();
        ignore.push(("unknown-coupon", "ignore"));
        assert!(amounts(decide(&o, &ignore)).is_empty());
        o.coupon_codes = vec!["SAVE10".into(), "WELCOME5".into(), "save10".into()];
        assert_eq!(reject_code(decide(&o, &CONFIG)), "too-many-coupons");
    }

    #[test]
    fn bad_config_is_refused() {
        assert!(settings::<Discount>(&[("coupons", "X:percent")]).is_err());
        assert!(settings::<Discount>(&[("coupons", "X:percent:20000")]).is_err());
        assert!(settings::<Discount>(&[("tiers", "ten:500")]).is_err());
        assert!(settings::<Discount>(&[("unknown-coupon", "maybe")]).is_err());
    }
}
