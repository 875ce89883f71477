//! The page's usage: the "Requests (24 h)" column, and the chart a key's "Usage" button opens
//! (bars per hour or per day, drawn as inline SVG by the page's own script), with the mouse
//! and with the keyboard alone at 360 pixels.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde_json::Value;
use tower_api_key::usage::{Hour, UsageBatch, UsageDelta};

use super::{Page, TOKEN, row, rows};
use crate::support::wait;

/// What the chart shows, read in one script: its bars (start, values, the heights of their
/// two segments), the axis's top and the plot's height, its summary and the total under it.
const READ_CHART: &str = r##"
    const panel = document.getElementById("usage");
    const chart = document.querySelector("#usage-chart svg");
    if (panel.hidden || !chart) {
        return null;
    }
    const number = (el, name) => Number(el.getAttribute(name));
    return {
        axisMax: number(chart, "data-axis-max"),
        plotHeight: number(chart, "data-plot-height"),
        label: chart.getAttribute("aria-label"),
        role: chart.getAttribute("role"),
        total: document.getElementById("usage-total").innerText,
        hoursPressed: document.getElementById("usage-hours").getAttribute("aria-pressed"),
        bars: [...chart.querySelectorAll("g.bar")].map((g) => ({
            start: g.dataset.start,
            accepted: Number(g.dataset.accepted),
            refused: Number(g.dataset.refused),
            acceptedHeight: number(g.querySelector(".bar-accepted"), "height"),
            refusedHeight: number(g.querySelector(".bar-refused"), "height"),
        })),
        labels: [...chart.querySelectorAll("text")].map((t) => t.textContent),
        table: [...document.querySelectorAll("#usage-rows tr")]
            .map((tr) => [...tr.cells].map((td) => td.textContent)),
    };
"##;

impl Page {
    /// The chart as [`READ_CHART`] reads it, or `null` when none is shown.
    async fn chart(&self) -> Value {
        self.browser
            .client
            .execute(READ_CHART, vec![])
            .await
            .expect("read the chart")
    }

    /// Waits until a chart of `bars` bars is shown, and returns it.
    async fn wait_for_chart(&self, bars: usize) -> Value {
        let deadline = tokio::time::Instant::now() + crate::support::browser::PATIENCE;
        loop {
            let chart = self.chart().await;
            if chart["bars"].as_array().is_some_and(|b| b.len() == bars) {
                return chart;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no chart of {bars} bars; the page shows {chart:#} and {:#}",
                self.state().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The top of the chart's value axis for a highest bar of `max`: the first multiple of the
/// step at or above it, the step being 1, 2 or 5 times a power of ten, about four steps high.
fn axis_top(max: u64) -> u64 {
    if max == 0 {
        return 1;
    }
    let (mut mantissa, mut decade) = (1, 1);
    while mantissa * decade * 4 < max {
        match mantissa {
            1 => mantissa = 2,
            2 => mantissa = 5,
            _ => (mantissa, decade) = (1, decade * 10),
        }
    }
    let step = mantissa * decade;
    max.div_ceil(step) * step
}

#[test]
fn the_axis_top_is_a_round_number_above_the_highest_bar() {
    let tops: Vec<u64> = [0, 1, 3, 4, 5, 7, 8, 9, 12, 21, 95, 101, 4_001]
        .into_iter()
        .map(axis_top)
        .collect();
    assert_eq!(tops, [1, 1, 3, 4, 6, 8, 8, 10, 15, 30, 100, 150, 6_000]);
}

/// Asserts that each bar's segments are as tall as their values against the axis's top, and
/// that the top is the round number above the highest bar.
fn assert_bars_to_scale(chart: &Value) {
    let bars = chart["bars"].as_array().expect("bars");
    let value = |bar: &Value, field: &str| bar[field].as_u64().expect("a count");
    let highest = bars
        .iter()
        .map(|bar| value(bar, "accepted") + value(bar, "refused"))
        .max()
        .expect("bars");
    let top = axis_top(highest);
    assert_eq!(chart["axisMax"], top, "{chart:#}");
    let plot = chart["plotHeight"].as_f64().expect("a height");
    for bar in bars {
        for (field, height) in [("accepted", "acceptedHeight"), ("refused", "refusedHeight")] {
            #[allow(clippy::cast_precision_loss)]
            let expected = value(bar, field) as f64 / top as f64 * plot;
            let drawn = bar[height].as_f64().expect("a height");
            assert!(
                (drawn - expected).abs() < 0.01,
                "{field} of {bar}: drawn {drawn}, expected {expected}"
            );
        }
    }
}

/// The bars of the last two hours added up: the test's own requests (two hours, in case they
/// straddle an hour's turn).
fn latest(chart: &Value) -> (u64, u64) {
    let bars = chart["bars"].as_array().expect("bars");
    bars[bars.len() - 2..].iter().fold((0, 0), |(a, r), bar| {
        (
            a + bar["accepted"].as_u64().expect("count"),
            r + bar["refused"].as_u64().expect("count"),
        )
    })
}

/// Earlier traffic for the chart to show, in hours 24 to 46 ago (so not in `requests_24h`, and
/// still in the chart if the hour turns): a day's rise and fall, with a few refusals. No hour
/// holds more than 7 requests.
async fn seed_yesterday(page: &Page, account: &str, key_id: &str) -> (u64, u64) {
    let now = Hour::containing(SystemTime::now()).index();
    let accepted = [
        0, 0, 0, 1, 2, 3, 5, 6, 6, 5, 6, 4, 5, 6, 6, 5, 4, 3, 3, 2, 2, 1, 1,
    ];
    let refused = [
        0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let counts = accepted
        .iter()
        .zip(refused)
        .enumerate()
        .map(|(i, (&accepted, refused))| UsageDelta {
            account_id: crate::support::account(account),
            key_id: key_id.parse().expect("a key id"),
            hour: Hour::from_index(now - 46 + u32::try_from(i).expect("small")),
            accepted,
            rate_limited: refused,
            refused: 0,
        })
        .collect();
    page.harness
        .manager
        .store()
        .record_usage(&UsageBatch {
            last_used: Vec::new(),
            counts,
        })
        .await
        .expect("record usage");
    (
        accepted.iter().sum::<i64>().unsigned_abs(),
        refused.iter().sum::<i64>().unsigned_abs(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_counts_a_keys_requests_and_its_chart_draws_them() {
    let Some(page) = Page::open(1100, 900).await else {
        return;
    };
    let created = page
        .harness
        .create(
            "acme",
            Some(r#"{"name": "CI", "rate_limit": {"requests": 5, "per_seconds": 86400}}"#),
        )
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    let key = created["key"].as_str().expect("key").to_owned();
    let (seeded_accepted, seeded_refused) = seed_yesterday(&page, "acme", &id).await;
    // Five let in, two over the limit: N = 5 accepted requests.
    for expected in [200, 200, 200, 200, 200, 429, 429] {
        assert_eq!(page.ping(&key).await.as_u16(), expected);
    }
    wait::until("the recorder to flush the requests", || async {
        page.harness.list("acme").await[0]["requests_24h"] == 5
    })
    .await;

    page.show_keys(TOKEN).await;
    let state = page.wait_for("the key's row", |s| rows(s).len() == 1).await;
    assert_eq!(row(&state, &id)["cells"]["Requests (24 h)"], "5");

    page.click_in_row(&id, "Usage").await;
    let chart = page.wait_for_chart(48).await;
    assert_eq!(
        page.focused().await,
        "usage-title",
        "focus moves to the chart"
    );
    assert_eq!(chart["role"], "img");
    assert_eq!(chart["hoursPressed"], "true");
    assert_eq!(latest(&chart), (5, 2), "{chart:#}");
    assert_bars_to_scale(&chart);
    // Ours is the highest bar, unless the requests straddled an hour's turn.
    let bars = chart["bars"].as_array().expect("bars");
    if let Some(ours) = bars.iter().find(|bar| bar["accepted"] == 5) {
        assert_eq!(chart["axisMax"], 8);
        let plot = chart["plotHeight"].as_f64().expect("height");
        let height = ours["acceptedHeight"].as_f64().expect("height");
        assert!((height - plot * 5.0 / 8.0).abs() < 0.01, "{ours}");
    }
    let (accepted, refused) = (seeded_accepted + 5, seeded_refused + 2);
    let label = chart["label"].as_str().expect("a summary");
    assert!(
        label.starts_with("Requests per hour over 48 hours")
            && label.contains(&format!(
                "{} requests, {accepted} accepted and {refused} refused",
                accepted + refused
            )),
        "{label}"
    );
    assert_eq!(
        chart["total"],
        format!(
            "Total over 48 hours: {} requests, {accepted} accepted, {refused} refused ({refused} rate limited).",
            accepted + refused
        )
    );
    // The table under the chart: a row per bar, the same numbers.
    let table = chart["table"].as_array().expect("a table");
    assert_eq!(table.len(), 48, "{table:?}");
    let column = |index: usize| -> u64 {
        table
            .iter()
            .map(|row| {
                row[index]
                    .as_str()
                    .expect("a cell")
                    .parse::<u64>()
                    .expect("a count")
            })
            .sum()
    };
    assert_eq!(column(1), accepted, "{table:?}");
    assert_eq!(column(2) + column(3), refused, "{table:?}");
    let labels = chart["labels"].as_array().expect("labels");
    for axis in ["Requests", "Hour (UTC)", "0", "8"] {
        assert!(labels.iter().any(|l| l == axis), "no {axis} in {labels:?}");
    }
    // The whole panel in view for its screenshot.
    page.browser
        .client
        .set_window_size(1100, 1400)
        .await
        .expect("resize");
    page.browser
        .client
        .execute(
            "document.getElementById('usage').scrollIntoView({block: 'center'})",
            vec![],
        )
        .await
        .expect("scroll");
    let png = page
        .find("#usage")
        .await
        .screenshot()
        .await
        .expect("a screenshot of the chart");
    save_chart_screenshot(&png);

    // Days: 30 bars, the same requests.
    page.click("#usage-days").await;
    let chart = page.wait_for_chart(30).await;
    assert_eq!(chart["hoursPressed"], "false");
    assert_bars_to_scale(&chart);
    let sum = |field: &str| -> u64 {
        chart["bars"]
            .as_array()
            .expect("bars")
            .iter()
            .map(|bar| bar[field].as_u64().expect("count"))
            .sum()
    };
    assert_eq!((sum("accepted"), sum("refused")), (accepted, refused));
    assert!(
        chart["labels"]
            .as_array()
            .expect("labels")
            .iter()
            .any(|l| l == "Day (UTC)")
    );

    // Close: the chart goes, focus returns to the keys.
    page.click("#usage-close").await;
    assert!(page.chart().await.is_null());
    assert_eq!(page.focused().await, "keys-title");
    assert!(page.state().await["error"].is_null());

    // A deleted key takes its open chart with it.
    page.click_in_row(&id, "Usage").await;
    page.wait_for_chart(48).await;
    page.click_in_row(&id, "Delete").await;
    page.confirm("Delete key", true).await;
    page.wait_for_count("0 of 3 keys").await;
    assert!(page.chart().await.is_null());
    page.browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_works_at_360_pixels_with_the_keyboard_alone() {
    let Some(page) = Page::open(360, 740).await else {
        return;
    };
    let created = page.harness.create("acme", None).await;
    let key = created["key"].as_str().expect("key").to_owned();
    assert_eq!(page.ping(&key).await, StatusCode::OK);
    page.show_keys(TOKEN).await;
    page.wait_for_count("1 of 3 keys").await;

    // From the keys' heading, Tab to the row's "Usage" and press Enter.
    page.browser
        .client
        .execute("document.getElementById('keys-title').focus()", vec![])
        .await
        .expect("focus");
    let mut tabs = 0;
    loop {
        page.press("\u{E004}").await;
        tabs += 1;
        let label: Value = page
            .browser
            .client
            .execute(
                "return document.activeElement.getAttribute('aria-label')",
                vec![],
            )
            .await
            .expect("read focus");
        if label.as_str().is_some_and(|l| l.starts_with("Usage of ")) {
            break;
        }
        assert!(tabs < 30, "Tab never reached the Usage button");
    }
    page.press("\u{E007}").await;
    page.wait_for_chart(48).await;
    assert_eq!(page.focused().await, "usage-title");

    // Tab to "Days (30)", Enter: the day chart.
    page.press("\u{E004}\u{E004}").await;
    assert_eq!(page.focused().await, "usage-days");
    page.press("\u{E007}").await;
    let chart = page.wait_for_chart(30).await;
    assert_bars_to_scale(&chart);
    page.assert_no_sideways_scroll().await;

    // Tab to "Close", Enter: the chart goes and focus returns to the keys.
    page.press("\u{E004}").await;
    assert_eq!(page.focused().await, "usage-close");
    page.press("\u{E007}").await;
    wait::until("the chart to close", || async {
        page.chart().await.is_null()
    })
    .await;
    assert_eq!(page.focused().await, "keys-title");
    page.browser.finish().await;
}

/// Keeps the chart's screenshot: always under `target/`, and in `docs/usage-chart.png` when
/// `UPDATE_SCREENSHOT=1`.
fn save_chart_screenshot(png: &[u8]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(root.join("target/usage-chart.png"), png).expect("write the screenshot");
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        std::fs::create_dir_all(root.join("docs")).expect("docs/");
        std::fs::write(root.join("docs/usage-chart.png"), png).expect("write docs/");
    }
}
