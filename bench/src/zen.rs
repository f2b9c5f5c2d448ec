//! The default ruleset's decisions as a GoRules ZEN decision graph (JDM), built from the
//! same config, for a side-by-side comparison with zen-engine.

use std::sync::Arc;

use order_rules_engine::Order;
// ISO code lists of rule-validate, so that ZEN checks exactly the same codes.
use rule_validate::iso;
use serde_json::{Value, json};
use zen_engine::Decision;
use zen_engine::model::DecisionContent;

use crate::config;

fn key<'a>(config: &'a [(String, String)], name: &str) -> Result<&'a str, String> {
    config
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| format!("config key `{name}` missing from the default ruleset"))
}

fn list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `K:V, K:V` pairs.
fn pairs(raw: &str) -> Result<Vec<(String, i64)>, String> {
    list(raw)
        .into_iter()
        .map(|p| {
            let (k, v) = p
                .split_once(':')
                .ok_or_else(|| format!("`{p}` is not K:V"))?;
            let v = v
                .trim()
                .parse()
                .map_err(|_| format!("`{p}`: not a number"))?;
            Ok((k.trim().to_string(), v))
        })
        .collect()
}

fn quoted(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", inner.join(", "))
}

fn node(id: &str, kind: &str, content: Value) -> Value {
    json!({ "id": id, "name": id, "type": kind, "content": content })
}

fn expressions(pairs: &[(&str, String)]) -> Value {
    let expressions: Vec<Value> = pairs
        .iter()
        .enumerate()
        .map(|(i, (k, v))| json!({ "id": format!("e{i}"), "key": k, "value": v }))
        .collect();
    json!({ "expressions": expressions, "passThrough": true })
}

/// One row of a first-hit decision table: `(input id, unary test)` cells and outputs.
fn row(i: usize, cells: &[(&str, &str)], outputs: &[(&str, String)]) -> Value {
    let mut row = serde_json::Map::new();
    row.insert("_id".into(), json!(format!("r{i}")));
    for (input, test) in cells {
        row.insert((*input).into(), json!(test));
    }
    for (output, value) in outputs {
        row.insert((*output).into(), json!(value));
    }
    Value::Object(row)
}

fn table(inputs: &[(&str, &str)], output: &str, rows: Vec<Value>) -> Value {
    let inputs: Vec<Value> = inputs
        .iter()
        .map(|(id, field)| json!({ "id": id, "name": field, "field": field }))
        .collect();
    json!({
        "hitPolicy": "first",
        "inputs": inputs,
        "outputs": [{ "id": "out", "name": output, "field": output }],
        "rules": rows,
        "passThrough": true,
    })
}

/// The default chain (validate → fraud → discount → tax, with the default ruleset's
/// config) as a JDM graph: expression nodes and first-hit decision tables.
///
/// The one check it leaves out is rule-validate's duplicate-SKU test: comparing lines
/// with each other needs nested closures, which ZEN's expression language does not have
/// (a JavaScript function node could, at a far higher cost). Every other check, limit,
/// table and rounding rule is the same, which `agrees_with_the_wasm_chain` asserts.
pub fn jdm() -> Result<Value, String> {
    let validate = config("rule-validate")?;
    let fraud = config("rule-fraud")?;
    let discount = config("rule-discount")?;
    let tax = config("rule-tax")?;

    let currencies: Vec<String> = iso::CURRENCIES.iter().map(|c| c.to_string()).collect();
    let countries: Vec<String> = iso::COUNTRIES.iter().map(|c| c.to_string()).collect();
    let id_ok = |field: &str| {
        format!(
            "(len({field}) > 0 and len({field}) <= 128 and trim({field}) == {field} \
             and not matches({field}, \"[[:cntrl:]]\"))"
        )
    };
    let validate_node = expressions(&[
        ("units", "sum(map(lines, #.quantity))".into()),
        (
            "subtotal",
            "sum(map(lines, #.quantity * #.unit_price))".into(),
        ),
        (
            "maxQuantity",
            "len(lines) > 0 ? max(map(lines, #.quantity)) : 0".into(),
        ),
        (
            "valid",
            format!(
                "{id} and (customer_id == \"\" or {customer}) and currency in {currencies} \
                 and (shipping_country == \"\" or shipping_country in {countries}) \
                 and len(lines) >= 1 and len(lines) <= {max_lines} and $.units <= {max_units} \
                 and all(lines, {sku} and #.quantity >= 1 and #.unit_price >= 0) \
                 and len(coupon_codes) <= 8 and all(coupon_codes, {coupon}) \
                 and len(attributes) <= 32",
                id = id_ok("id"),
                customer = id_ok("customer_id"),
                currencies = quoted(&currencies),
                countries = quoted(&countries),
                max_lines = key(&validate, "max-lines")?,
                max_units = key(&validate, "max-units")?,
                sku = id_ok("#.sku"),
                coupon = id_ok("#"),
            ),
        ),
    ]);

    // Fraud: first hit wins; the totals the rule sees are the subtotal (no adjustments yet).
    let max_total = key(&fraud, "max-total")?;
    let mut fraud_rows: Vec<(Vec<(&str, String)>, bool)> = Vec::new();
    for country in list(key(&fraud, "blocked-countries")?) {
        fraud_rows.push((vec![("country", format!("\"{country}\""))], false));
    }
    let max_quantity = key(&fraud, "max-line-quantity")?;
    fraud_rows.push((vec![("qty", format!("> {max_quantity}"))], false));
    for (currency, limit) in fraud
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("max-total.")?, v)))
    {
        let currency = format!("\"{currency}\"");
        fraud_rows.push((
            vec![
                ("currency", currency.clone()),
                ("total", format!("> {limit}")),
            ],
            false,
        ));
        fraud_rows.push((vec![("currency", currency)], true));
    }
    fraud_rows.push((vec![("total", format!("> {max_total}"))], false));
    fraud_rows.push((Vec::new(), true));
    let fraud_rows: Vec<Value> = fraud_rows
        .iter()
        .enumerate()
        .map(|(i, (cells, accepts))| {
            let cells: Vec<(&str, &str)> = cells.iter().map(|(c, t)| (*c, t.as_str())).collect();
            row(i, &cells, &[("out", accepts.to_string())])
        })
        .collect();
    let fraud_node = table(
        &[
            ("country", "shipping_country"),
            ("currency", "currency"),
            ("total", "subtotal"),
            ("qty", "maxQuantity"),
        ],
        "fraudOk",
        fraud_rows,
    );

    // Volume tiers: highest first.
    let mut tiers = pairs(key(&discount, "tiers")?)?;
    tiers.sort_by_key(|(units, _)| std::cmp::Reverse(units.parse::<i64>().unwrap_or(0)));
    let mut tier_rows: Vec<Value> = tiers
        .iter()
        .enumerate()
        .map(|(i, (units, bp))| {
            row(
                i,
                &[("units", format!(">= {units}").as_str())],
                &[("out", bp.to_string())],
            )
        })
        .collect();
    tier_rows.push(row(tiers.len(), &[], &[("out", "0".into())]));
    let tier_node = table(&[("units", "units")], "tierBp", tier_rows);

    // Coupons: CODE:percent:BP or CODE:fixed:AMOUNT:CURRENCY, at most max-coupons
    // distinct codes (case-insensitive), unknown codes reject. `@` stands for the code.
    let coupons: Vec<Vec<String>> = list(key(&discount, "coupons")?)
        .iter()
        .map(|c| c.split(':').map(str::to_string).collect())
        .collect();
    if key(&discount, "max-coupons")? != "2" || key(&discount, "unknown-coupon")? != "reject" {
        return Err("the ZEN graph is written for max-coupons = 2, unknown-coupon = reject".into());
    }
    let codes: Vec<String> = coupons.iter().map(|c| c[0].to_uppercase()).collect();
    let mut percent = String::new();
    let mut fixed = String::new();
    let mut currency_ok = String::new();
    for c in &coupons {
        let code = c[0].to_uppercase();
        match c.get(1).map(String::as_str) {
            Some("percent") => percent.push_str(&format!("@ == \"{code}\" ? {} : ", c[2])),
            Some("fixed") => {
                fixed.push_str(&format!("@ == \"{code}\" ? {} : ", c[2]));
                currency_ok.push_str(&format!(
                    "(@ == \"{code}\" and currency != \"{}\") or ",
                    c[3]
                ));
            }
            _ => return Err(format!("coupon `{}` not understood", c.join(":"))),
        }
    }
    let percent_of = |amount: &str, bp: &str| format!("floor(({amount} * {bp} + 5000) / 10000)");
    let coupon_amount = |c: &str, net: &str| {
        let bp = format!("({percent}0)").replace('@', c);
        let fixed = format!("({fixed}0)").replace('@', c);
        format!(
            "{c} == null ? 0 : ({bp} > 0 ? {p} : min([{fixed}, max([{net}, 0])]))",
            p = percent_of(net, &bp)
        )
    };
    let discount_node = expressions(&[
        ("codes", "map(coupon_codes, upper(#))".into()),
        ("c1", "len($.codes) > 0 ? $.codes[0] : null".into()),
        (
            "c2",
            "len(filter($.codes, # != $.c1)) > 0 ? filter($.codes, # != $.c1)[0] : null".into(),
        ),
        (
            "discountOk",
            format!(
                "all($.codes, # in {codes}) and len(filter($.codes, # != $.c1 and # != $.c2)) == 0 \
                 and not ({wrong1}{wrong2}false)",
                codes = quoted(&codes),
                wrong1 = currency_ok.replace('@', "$.c1"),
                wrong2 = currency_ok.replace('@', "$.c2"),
            ),
        ),
        ("tierAmount", percent_of("subtotal", "tierBp")),
        ("net1", "subtotal - $.tierAmount".into()),
        ("c1Amount", coupon_amount("$.c1", "$.net1")),
        ("net2", "$.net1 - $.c1Amount".into()),
        ("c2Amount", coupon_amount("$.c2", "$.net2")),
        ("discounts", "$.tierAmount + $.c1Amount + $.c2Amount".into()),
    ]);

    let mut tax_rows: Vec<Value> = pairs(key(&tax, "rates")?)?
        .iter()
        .enumerate()
        .map(|(i, (country, bp))| {
            row(
                i,
                &[("country", format!("\"{country}\"").as_str())],
                &[("out", bp.to_string())],
            )
        })
        .collect();
    if tax.iter().any(|(k, _)| k == "default-rate") {
        return Err("the ZEN graph is written for a tax table without default-rate".into());
    }
    tax_rows.push(row(tax_rows.len(), &[], &[("out", "0".into())]));
    let tax_node = table(&[("country", "shipping_country")], "taxBp", tax_rows);

    let total_node = expressions(&[
        ("tax", percent_of("max([subtotal - discounts, 0])", "taxBp")),
        ("total", "subtotal - discounts + $.tax".into()),
        (
            "status",
            "valid and fraudOk and discountOk ? \"accepted\" : \"rejected\"".into(),
        ),
    ]);

    let nodes = vec![
        node("input", "inputNode", json!({})),
        node("validate", "expressionNode", validate_node),
        node("fraud", "decisionTableNode", fraud_node),
        node("tiers", "decisionTableNode", tier_node),
        node("discount", "expressionNode", discount_node),
        node("tax", "decisionTableNode", tax_node),
        node("totals", "expressionNode", total_node),
        node("output", "outputNode", json!({})),
    ];
    let ids = [
        "input", "validate", "fraud", "tiers", "discount", "tax", "totals", "output",
    ];
    let edges: Vec<Value> = ids
        .windows(2)
        .enumerate()
        .map(|(i, w)| json!({ "id": format!("edge{i}"), "sourceId": w[0], "targetId": w[1] }))
        .collect();
    Ok(json!({ "nodes": nodes, "edges": edges }))
}

/// The JDM graph, parsed and precompiled (expression opcodes, table indexes).
pub fn decision() -> Result<Decision, String> {
    let content: DecisionContent =
        serde_json::from_value(jdm()?).map_err(|e| format!("the JDM graph does not parse: {e}"))?;
    let graph = match content {
        DecisionContent::Graph(graph) => graph,
        DecisionContent::Policy(_) => return Err("built a policy, not a graph".into()),
    };
    let mut decision = Decision::from(Arc::clone(&graph));
    decision.compile();
    Ok(decision)
}

/// The order as ZEN's input context.
pub fn input(order: &Order) -> zen_engine::Variable {
    let lines: Vec<Value> = order
        .lines
        .iter()
        .map(|l| json!({ "sku": l.sku, "quantity": l.quantity, "unit_price": l.unit_price }))
        .collect();
    let attributes: Vec<Value> = order
        .attributes
        .iter()
        .map(|(k, v)| json!([k, v]))
        .collect();
    json!({
        "id": order.id,
        "customer_id": order.customer_id,
        "currency": order.currency,
        "lines": lines,
        "shipping_country": order.shipping_country,
        "coupon_codes": order.coupon_codes,
        "attributes": attributes,
    })
    .into()
}

/// What ZEN decided: `accepted` or `rejected`, and the total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZenOutcome {
    /// `accepted` or `rejected`.
    pub status: String,
    /// Total after discounts and tax, in minor units.
    pub total: i64,
}

/// Evaluates `order` with `decision` on the current-thread runtime `rt`.
pub fn evaluate(
    rt: &tokio::runtime::Runtime,
    decision: &Decision,
    order: &Order,
) -> Result<ZenOutcome, String> {
    let response = rt
        .block_on(decision.evaluate(input(order)))
        .map_err(|e| format!("zen-engine: {e:?}"))?;
    let result = response.result.to_value();
    let status = result["status"]
        .as_str()
        .ok_or_else(|| format!("no status in {result}"))?
        .to_string();
    let total = result["total"]
        .as_f64()
        .or_else(|| result["total"].as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| format!("no total in {result}"))?;
    Ok(ZenOutcome {
        status,
        total: total as i64,
    })
}

/// A current-thread runtime to drive zen-engine's async evaluation.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| e.to_string())
}
