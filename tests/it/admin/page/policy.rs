//! A key's allowlist, quota and metadata through the page: set at create and in a key's
//! "Edit" form, shown in its row (the quota as "used / requests per period"), metadata that
//! isn't a JSON object refused in the page before anything is sent, and each cleared again.

use http::StatusCode;
use serde_json::{Value, json};

use super::{Page, TOKEN, row, rows};
use crate::support::wait;

/// What the page shows of the metadata fields and the edit form, read in one script.
const READ_FORMS: &str = r##"
    const visible = (el) => !el.hidden && !el.closest("[hidden]");
    const value = (id) => document.getElementById(id).value;
    const error = (id) => {
        const el = document.getElementById(id);
        return visible(el) ? el.innerText : null;
    };
    return {
        metadataError: error("metadata-error"),
        metadataInvalid: document.getElementById("metadata").getAttribute("aria-invalid"),
        editShown: visible(document.getElementById("edit-form")),
        editPrefix: document.getElementById("edit-prefix").innerText,
        editAllowedIps: value("edit-allowed-ips"),
        editQuotaRequests: value("edit-quota-requests"),
        editQuotaPeriod: value("edit-quota-period"),
        editMetadata: value("edit-metadata"),
        editMetadataError: error("edit-metadata-error"),
    };
"##;

impl Page {
    async fn forms(&self) -> Value {
        self.browser
            .client
            .execute(READ_FORMS, vec![])
            .await
            .expect("read the forms")
    }

    /// Waits until `ready` holds for [`forms`](Self::forms), and returns them.
    async fn wait_for_forms(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + crate::support::browser::PATIENCE;
        loop {
            let forms = self.forms().await;
            if ready(&forms) {
                return forms;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed {what}; its forms show {forms:#} and it shows {:#}",
                self.state().await
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    async fn select(&self, css: &str, value: &str) {
        self.find(css)
            .await
            .select_by_value(value)
            .await
            .expect("select");
    }

    /// Waits until key `id`'s row shows `allowed` and `quota` in its two columns.
    async fn wait_for_row(&self, id: &str, allowed: &str, quota: &str) -> Value {
        self.wait_for(&format!("{allowed} and {quota} for {id}"), |s| {
            rows(s).iter().any(|r| {
                r["id"] == id
                    && r["cells"]["Allowed addresses"] == allowed
                    && r["cells"]["Quota used"] == quota
            })
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_quota_and_metadata_are_set_shown_refused_and_cleared_through_the_page() {
    crate::support::clock::in_one_quota_period().await;
    let Some(page) = Page::open(1280, 900).await else {
        return;
    };
    page.show_keys(TOKEN).await;
    page.wait_for_count("0 of 3 keys").await;

    // Create, with metadata that is JSON but no object, then no JSON at all: the page says
    // so next to the field and sends nothing.
    page.fill("#allowed-ips", "203.0.113.0/24, 198.51.100.7")
        .await;
    page.fill("#quota-requests", "1000").await;
    page.select("#quota-period", "day").await;
    for (typed, says) in [
        ("[1, 2]", "must be a JSON object"),
        (r#"{"plan": pro}"#, "not valid JSON"),
        ("null", "must be a JSON object"),
    ] {
        page.fill("#metadata", typed).await;
        page.click("#create").await;
        let forms = page
            .wait_for_forms("the metadata's error", |f| {
                f["metadataError"]
                    .as_str()
                    .is_some_and(|error| error.contains(says))
            })
            .await;
        assert_eq!(forms["metadataInvalid"], "true");
        let state = page.state().await;
        assert!(
            state["newKey"].is_null() && state["error"].is_null(),
            "{state:#}"
        );
        assert!(
            page.harness.list("acme").await.is_empty(),
            "{typed} was sent"
        );
    }
    page.fill("#metadata", r#"{"plan": "pro", "seats": 5}"#)
        .await;
    let key = page.create_shown().await;
    let forms = page.forms().await;
    assert!(forms["metadataError"].is_null(), "{forms:#}");
    assert_ne!(forms["metadataInvalid"], "true");
    let listed = page.harness.list("acme").await;
    let id = listed[0]["id"].as_str().expect("id").to_owned();
    assert_eq!(
        listed[0]["allowed_ips"],
        json!(["198.51.100.7/32", "203.0.113.0/24"])
    );
    assert_eq!(
        listed[0]["quota"],
        json!({"requests": 1000, "period": "day"})
    );
    assert_eq!(listed[0]["metadata"], json!({"plan": "pro", "seats": 5}));
    page.wait_for_row(&id, "198.51.100.7/32 203.0.113.0/24", "0 / 1000 per day")
        .await;
    assert!(key.starts_with(listed[0]["prefix"].as_str().expect("prefix")));

    // Another key, with a monthly quota and requests made with it: the row counts them.
    let counted = page
        .harness
        .create(
            "acme",
            Some(r#"{"quota": {"requests": 50, "period": "month"}}"#),
        )
        .await;
    let counted_id = counted["id"].as_str().expect("id").to_owned();
    for _ in 0..2 {
        assert_eq!(
            page.ping(counted["key"].as_str().expect("key")).await,
            StatusCode::OK
        );
    }
    wait::until("the requests to be flushed", || async {
        page.harness.list("acme").await[1]["quota_used"] == 2
    })
    .await;
    page.click("#show").await;
    page.wait_for_row(&counted_id, "Any", "2 / 50 per month")
        .await;
    let state = page.wait_for_count("2 of 3 keys").await;
    assert_eq!(
        row(&state, &id)["cells"]["Quota used"],
        "0 / 1000 per day",
        "{state:#}"
    );

    // Edit: the form holds the key's values.
    page.click_in_row(&id, "Edit").await;
    let forms = page
        .wait_for_forms("the edit form", |f| f["editShown"] == true)
        .await;
    assert_eq!(page.focused().await, "edit-title");
    assert_eq!(forms["editPrefix"], listed[0]["prefix"]);
    assert_eq!(forms["editAllowedIps"], "198.51.100.7/32, 203.0.113.0/24");
    assert_eq!(forms["editQuotaRequests"], "1000");
    assert_eq!(forms["editQuotaPeriod"], "day");
    let shown: Value =
        serde_json::from_str(forms["editMetadata"].as_str().expect("text")).expect("JSON");
    assert_eq!(shown, json!({"plan": "pro", "seats": 5}));

    // Replace all three, with metadata that isn't JSON first: refused in the page.
    page.fill("#edit-allowed-ips", "203.0.113.9").await;
    page.fill("#edit-quota-requests", "500").await;
    page.select("#edit-quota-period", "month").await;
    page.fill("#edit-metadata", r#"{"plan": enterprise}"#).await;
    page.click("#edit-save").await;
    page.wait_for_forms("the edit form's metadata error", |f| {
        f["editMetadataError"]
            .as_str()
            .is_some_and(|error| error.contains("not valid JSON"))
    })
    .await;
    assert_eq!(
        page.harness.list("acme").await[0],
        listed[0],
        "nothing was sent"
    );
    page.fill("#edit-metadata", r#"{"plan": "enterprise"}"#)
        .await;
    page.click("#edit-save").await;
    page.wait_for_row(&id, "203.0.113.9/32", "0 / 500 per month")
        .await;
    page.wait_for_forms("the edit form to close", |f| f["editShown"] == false)
        .await;
    let record = page.harness.list("acme").await.remove(0);
    assert_eq!(record["allowed_ips"], json!(["203.0.113.9/32"]));
    assert_eq!(record["quota"], json!({"requests": 500, "period": "month"}));
    assert_eq!(record["metadata"], json!({"plan": "enterprise"}));
    assert_eq!(record["name"], Value::Null, "the rest is kept");

    // Changing one field keeps the others.
    page.click_in_row(&id, "Edit").await;
    page.wait_for_forms("the edit form", |f| {
        f["editShown"] == true && f["editQuotaRequests"] == "500"
    })
    .await;
    page.fill("#edit-quota-requests", "400").await;
    page.click("#edit-save").await;
    page.wait_for_row(&id, "203.0.113.9/32", "0 / 400 per month")
        .await;
    let record = page.harness.list("acme").await.remove(0);
    assert_eq!(record["metadata"], json!({"plan": "enterprise"}));

    // Clear all three: empty fields.
    page.click_in_row(&id, "Edit").await;
    page.wait_for_forms("the edit form", |f| {
        f["editShown"] == true && f["editQuotaRequests"] == "400"
    })
    .await;
    for field in [
        "#edit-allowed-ips",
        "#edit-quota-requests",
        "#edit-metadata",
    ] {
        page.find(field).await.clear().await.expect("clear");
    }
    page.click("#edit-save").await;
    let state = page.wait_for_row(&id, "Any", "—").await;
    assert!(state["error"].is_null(), "{state:#}");
    let record = page.harness.list("acme").await.remove(0);
    for field in ["allowed_ips", "quota", "quota_used", "metadata"] {
        assert!(record[field].is_null(), "{field}: {record}");
    }
    // The other key was left alone.
    let state = page.state().await;
    assert_eq!(
        row(&state, &counted_id)["cells"]["Quota used"],
        "2 / 50 per month"
    );
    page.browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_allowlist_and_the_edit_form_fit_a_phone() {
    let Some(page) = Page::open(360, 740).await else {
        return;
    };
    let addresses: Vec<String> = (1..=6)
        .map(|i| format!("2001:db8:aaaa:bbbb:cccc:dddd:eeee:{i:04x}"))
        .collect();
    let body = json!({
        "allowed_ips": addresses,
        "quota": {"requests": 1_000_000_000, "period": "month"},
        "metadata": {"a-rather-long-member-name-without-any-break": "and-a-value-without-one-either"},
    });
    let created = page.harness.create("acme", Some(&body.to_string())).await;
    let id = created["id"].as_str().expect("id").to_owned();
    page.show_keys(TOKEN).await;
    let state = page.wait_for_count("1 of 3 keys").await;
    let shown = row(&state, &id)["cells"]["Allowed addresses"]
        .as_str()
        .expect("text")
        .to_owned();
    assert!(
        shown.contains("2001:db8:aaaa:bbbb:cccc:dddd:eeee:6/128"),
        "{shown}"
    );
    assert_eq!(
        row(&state, &id)["cells"]["Quota used"],
        "0 / 1000000000 per month"
    );
    page.assert_no_sideways_scroll().await;
    page.click_in_row(&id, "Edit").await;
    page.wait_for_forms("the edit form", |f| f["editShown"] == true)
        .await;
    page.assert_no_sideways_scroll().await;
    page.click("#edit-cancel").await;
    page.wait_for_forms("the edit form to close", |f| f["editShown"] == false)
        .await;
    assert_eq!(page.focused().await, "keys-title");
    page.browser.finish().await;
}
