//! Translation between the gRPC messages and the domain: the strict validation of an
//! incoming order envelope (every problem named by its field), the lenient reading of
//! orders found on the log, and results to `ResultResponse`.

use std::collections::BTreeMap;

use crate::domain::OrderResult;
use crate::domain::{Order, OrderLine};
use crate::proto;

/// Longest order id, SKU, coupon code or attribute key, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Most lines in one order.
pub const MAX_LINES: usize = 1000;
/// Most coupon codes in one order.
pub const MAX_COUPONS: usize = 32;
/// Most attributes in one order.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
/// Largest encoded order, in bytes.
pub const MAX_ORDER_BYTES: usize = 256 << 10;

/// A problem with one field of an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field, e.g. `lines[2].quantity`.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks an order envelope as the OrderService receives it; the first problem is
/// returned, naming its field. Business validation is the rules' job.
pub fn validate(request: &proto::OrderRequest, encoded_len: usize) -> Result<(), FieldError> {
    if encoded_len > MAX_ORDER_BYTES {
        return Err(field_error(
            "order",
            format!("{encoded_len} bytes encoded, at most {MAX_ORDER_BYTES} allowed"),
        ));
    }
    check_text("id", &request.id, true)?;
    check_items(request)?;
    if !request.currency.is_empty() && !is_upper_code(&request.currency, 3) {
        return Err(field_error(
            "currency",
            format!("`{}` is not an ISO 4217 code such as EUR", request.currency),
        ));
    }
    if !request.shipping_country.is_empty() && !is_upper_code(&request.shipping_country, 2) {
        return Err(field_error(
            "shipping_country",
            format!(
                "`{}` is not an ISO 3166-1 alpha-2 code such as DE",
                request.shipping_country
            ),
        ));
    }
    check_text("customer_id", &request.customer_id, false)?;
    check_extras(request)
}

/// The single item and price, or the lines.
fn check_items(request: &proto::OrderRequest) -> Result<(), FieldError> {
    if request.lines.is_empty() {
        check_text("item", &request.item, true)?;
        if request.price < 0 {
            return Err(field_error(
                "price",
                format!("{} is negative", request.price),
            ));
        }
        return Ok(());
    }
    if !request.item.is_empty() || request.price != 0 {
        return Err(field_error(
            "item",
            "give either item and price (a single-item order) or lines, not both",
        ));
    }
    if request.lines.len() > MAX_LINES {
        return Err(field_error(
            "lines",
            format!("{} lines, at most {MAX_LINES} allowed", request.lines.len()),
        ));
    }
    for (i, line) in request.lines.iter().enumerate() {
        check_text(&format!("lines[{i}].sku"), &line.sku, true)?;
        if line.quantity == 0 {
            return Err(field_error(
                format!("lines[{i}].quantity"),
                "must be at least 1",
            ));
        }
        if line.unit_price < 0 {
            return Err(field_error(
                format!("lines[{i}].unit_price"),
                format!("{} is negative", line.unit_price),
            ));
        }
    }
    Ok(())
}

/// The coupon codes and the attributes.
fn check_extras(request: &proto::OrderRequest) -> Result<(), FieldError> {
    if request.coupon_codes.len() > MAX_COUPONS {
        return Err(field_error(
            "coupon_codes",
            format!("at most {MAX_COUPONS} coupon codes allowed"),
        ));
    }
    for (i, code) in request.coupon_codes.iter().enumerate() {
        check_text(&format!("coupon_codes[{i}]"), code, true)?;
    }
    if request.attributes.len() > MAX_ATTRIBUTES {
        return Err(field_error(
            "attributes",
            format!("at most {MAX_ATTRIBUTES} attributes allowed"),
        ));
    }
    for (key, value) in &request.attributes {
        check_text("attributes (key)", key, true)?;
        if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            return Err(field_error(
                format!("attributes[{key}]"),
                format!("value is over {MAX_ATTRIBUTE_VALUE_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

/// Checks an order id as every call that names one takes it (`CreateOrder`,
/// `GetOrderResult`, `GetOrderResults`): present, at most [`MAX_ID_BYTES`] bytes, no
/// control characters.
pub fn check_id(field: &str, id: &str) -> Result<(), FieldError> {
    check_text(field, id, true)
}

fn check_text(field: &str, value: &str, required: bool) -> Result<(), FieldError> {
    if value.is_empty() {
        return if required {
            Err(field_error(field, "is required"))
        } else {
            Ok(())
        };
    }
    if value.len() > MAX_ID_BYTES {
        return Err(field_error(
            field,
            format!("is {} bytes, at most {MAX_ID_BYTES} allowed", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(field_error(field, "must not contain control characters"));
    }
    Ok(())
}

fn is_upper_code(value: &str, len: usize) -> bool {
    value.len() == len && value.bytes().all(|b| b.is_ascii_uppercase())
}

/// The order in a request read from the log. Lenient: anything but a missing id is left
/// for the rules to judge (orders from other producers, such as the Go OrderService,
/// were never validated). An empty currency becomes `default_currency`.
pub fn order_from_request(
    request: &proto::OrderRequest,
    default_currency: &str,
) -> Result<Order, FieldError> {
    if request.id.is_empty() {
        return Err(field_error("id", "is required"));
    }
    let lines = if request.lines.is_empty() {
        vec![OrderLine {
            sku: request.item.clone(),
            quantity: 1,
            unit_price: i64::from(request.price),
        }]
    } else {
        request
            .lines
            .iter()
            .map(|l| OrderLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price: l.unit_price,
            })
            .collect()
    };
    Ok(Order {
        id: request.id.clone(),
        customer_id: request.customer_id.clone(),
        currency: if request.currency.is_empty() {
            default_currency.to_string()
        } else {
            request.currency.clone()
        },
        lines,
        shipping_country: request.shipping_country.clone(),
        coupon_codes: request.coupon_codes.clone(),
        attributes: request
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    })
}

/// An [`Order`] as a request (for the `submit` command and tests).
pub fn request_from_order(order: &Order) -> proto::OrderRequest {
    proto::OrderRequest {
        id: order.id.clone(),
        customer_id: order.customer_id.clone(),
        currency: order.currency.clone(),
        lines: order
            .lines
            .iter()
            .map(|l| proto::OrderLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price: l.unit_price,
            })
            .collect(),
        shipping_country: order.shipping_country.clone(),
        coupon_codes: order.coupon_codes.clone(),
        attributes: order.attributes.clone().into_iter().collect(),
        ..proto::OrderRequest::default()
    }
}

/// A stored result as the CacheService answers it.
pub fn result_response(result: &OrderResult) -> proto::ResultResponse {
    proto::ResultResponse {
        item: result.item.clone(),
        price: result.go_price(),
        status: result.status.as_str().to_string(),
        id: result.id.clone(),
        currency: result.currency.clone(),
        totals: Some(proto::Totals {
            subtotal: result.totals.subtotal,
            discounts: result.totals.discounts,
            surcharges: result.totals.surcharges,
            tax: result.totals.tax,
            total: result.totals.total,
        }),
        adjustments: result
            .adjustments
            .iter()
            .map(|a| proto::Adjustment {
                rule: a.rule.clone(),
                kind: serde_json::to_value(a.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                label: a.label.clone(),
                amount: a.amount,
            })
            .collect(),
        reasons: result
            .reasons
            .iter()
            .map(|r| proto::Reason {
                rule: r.rule.clone(),
                code: r.code.clone(),
                message: r.message.clone(),
            })
            .collect(),
        rules: result
            .rules
            .iter()
            .map(|r| proto::RuleOutcome {
                name: r.name.clone(),
                version: r.version.clone(),
                digest: r.digest.clone(),
                outcome: r.outcome.as_str().to_string(),
                fuel_used: r.fuel_used,
                duration_us: r.duration_us,
            })
            .collect(),
        error: result.error.clone(),
        attempts: result.attempts,
        processed_at_unix_ms: result.processed_at_unix_ms,
        ruleset_version: result.ruleset_version,
        processed_by: result.processed_by.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(id: &str, item: &str, price: i32) -> proto::OrderRequest {
        proto::OrderRequest {
            id: id.into(),
            item: item.into(),
            price,
            ..Default::default()
        }
    }

    fn field_of(request: &proto::OrderRequest) -> String {
        validate(request, 10).unwrap_err().field
    }

    #[test]
    fn go_order_is_valid_and_becomes_one_line() {
        let request = single("e2e-test-1", "book", 42);
        assert_eq!(validate(&request, 10), Ok(()));
        let order = order_from_request(&request, "USD").unwrap();
        assert_eq!(order, Order::single_item("e2e-test-1", "book", 42, "USD"));
    }

    #[test]
    fn every_invalid_field_is_named() {
        assert_eq!(field_of(&single("", "book", 1)), "id");
        assert_eq!(field_of(&single("o", "", 1)), "item");
        assert_eq!(field_of(&single("o", "book", -1)), "price");
        assert_eq!(field_of(&single(&"x".repeat(200), "book", 1)), "id");
        let mut r = single("o", "book", 1);
        r.currency = "euro".into();
        assert_eq!(field_of(&r), "currency");
        let mut r = single("o", "book", 1);
        r.shipping_country = "DEU".into();
        assert_eq!(field_of(&r), "shipping_country");
        let mut r = single("o", "", 0);
        r.lines = vec![proto::OrderLine {
            sku: "a".into(),
            quantity: 0,
            unit_price: 1,
        }];
        assert_eq!(field_of(&r), "lines[0].quantity");
        r.lines[0].quantity = 1;
        r.lines[0].unit_price = -5;
        assert_eq!(field_of(&r), "lines[0].unit_price");
        r.lines[0].unit_price = 5;
        r.item = "book".into();
        assert_eq!(field_of(&r), "item");
        assert_eq!(
            validate(&single("o", "b", 1), MAX_ORDER_BYTES + 1)
                .unwrap_err()
                .field,
            "order"
        );
    }

    #[test]
    fn log_orders_are_read_leniently() {
        let order = order_from_request(&single("o", "", -3), "EUR").unwrap();
        assert_eq!(
            order.lines[0].unit_price, -3,
            "the rules will reject it, visibly"
        );
        assert!(order_from_request(&single("", "x", 1), "EUR").is_err());
    }
}
