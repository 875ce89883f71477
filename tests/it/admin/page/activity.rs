//! The page's "Activity" list: the account's audit trail, newest first, 20 at a time with
//! "Older" for the rest, redrawn after each change made through the page, refusals marked,
//! every value shown as text.

use std::time::Duration;

use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::Value;
use tower_api_key::admin::{
    AdminAttempt, AdminAuthorizer, AdminCaller, AdminDenied, AdminOperation,
};

use super::{Harness, Page, TOKEN, rows};
use crate::support::browser::PATIENCE;

/// The list as the page shows it: each entry's id, action, outcome and text; the status line;
/// whether "Older" is shown; how many elements other than text the entries hold.
const READ_ACTIVITY: &str = r##"
    const list = document.getElementById("activity-list");
    const older = document.getElementById("activity-older");
    return {
        entries: [...list.children].map((li) => ({
            id: Number(li.dataset.id),
            action: li.dataset.action,
            outcome: li.dataset.outcome,
            text: li.innerText,
        })),
        status: document.getElementById("activity-status").innerText,
        older: !older.hidden,
        markup: list.querySelectorAll("img, script, a, b").length,
    };
"##;

impl Page {
    async fn activity(&self) -> Value {
        self.browser
            .client
            .execute(READ_ACTIVITY, vec![])
            .await
            .expect("read the activity")
    }

    /// Waits until `ready` holds for the activity list, and returns it.
    async fn wait_for_activity(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let activity = self.activity().await;
            if ready(&activity) {
                return activity;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the activity never showed {what}; it shows {activity:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn entries(activity: &Value) -> &Vec<Value> {
    activity["entries"].as_array().expect("entries")
}

/// `(action, outcome)` of the newest entry.
fn newest(activity: &Value) -> (&str, &str) {
    let first = &entries(activity)[0];
    (
        first["action"].as_str().expect("action"),
        first["outcome"].as_str().expect("outcome"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_activity_list_shows_each_change_newest_first_and_pages_with_older() {
    let Some(page) = Page::open(1280, 900).await else {
        return;
    };
    page.show_keys(TOKEN).await;
    page.wait_for_count("0 of 3 keys").await;
    let activity = page
        .wait_for_activity("an empty trail", |a| a["status"] == "No activity yet.")
        .await;
    assert!(entries(&activity).is_empty() && activity["older"] == false);

    // A change made through the page is at the top of the list once it is redrawn.
    page.fill("#name", "<img src=x onerror=alert(1)>").await;
    page.create_shown().await;
    let activity = page
        .wait_for_activity("the create", |a| {
            entries(a).len() == 1 && newest(a) == ("create", "done")
        })
        .await;
    let text = entries(&activity)[0]["text"].as_str().expect("text");
    assert!(
        text.contains("Created") && text.contains("by operator"),
        "{text}"
    );
    // The name is shown as the text it is, never as markup.
    assert!(text.contains("<img src=x onerror=alert(1)>"), "{text}");
    assert_eq!(activity["markup"], 0);
    let state = page.wait_for_count("1 of 3 keys").await;
    let id = rows(&state)[0]["id"].as_str().expect("id").to_owned();
    page.click_in_row(&id, "Revoke").await;
    page.wait_for_activity("the revoke", |a| newest(a) == ("revoke", "done"))
        .await;

    // 24 more through the API, and a create refused at the limit: 27 in all.
    for _ in 0..12 {
        for action in ["/reactivate", "/revoke"] {
            let reply = page
                .harness
                .on_key(Method::POST, "acme", &id, action, None)
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        }
    }
    page.harness.create("acme", None).await;
    page.harness.create("acme", None).await;
    let refused = page
        .harness
        .admin(Method::POST, "/admin/accounts/acme/keys", None)
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    let trail = page
        .harness
        .admin(Method::GET, "/admin/accounts/acme/events?limit=500", None)
        .await
        .json();
    let all: Vec<u64> = trail["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|event| event["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(all.len(), 29);

    // "Show keys" again: the newest 20, the refusal first and marked, then "Older".
    page.click("#show").await;
    let activity = page
        .wait_for_activity("the newest page", |a| {
            entries(a).len() == 20 && newest(a) == ("create", "refused")
        })
        .await;
    assert_eq!(activity["older"], true);
    assert!(
        entries(&activity)[0]["text"]
            .as_str()
            .is_some_and(|text| text.contains("Refused: Created")),
        "{activity:#}"
    );
    page.click("#activity-older").await;
    let activity = page
        .wait_for_activity("every entry", |a| entries(a).len() == 29)
        .await;
    assert_eq!(activity["older"], false);
    let shown: Vec<u64> = entries(&activity)
        .iter()
        .map(|entry| entry["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(shown, all, "newest first, each entry once");
}

/// The operator token, but globex's trail may not be read.
struct NoTrailForGlobex;

#[async_trait::async_trait]
impl AdminAuthorizer for NoTrailForGlobex {
    async fn authenticate(&self, request: &Parts) -> Result<AdminCaller, AdminDenied> {
        let expected = format!("Bearer {TOKEN}");
        match request.headers.get("authorization") {
            Some(value) if value.as_bytes() == expected.as_bytes() => Ok(AdminCaller::Operator),
            _ => Err(AdminDenied::unauthenticated("invalid admin token")),
        }
    }

    async fn authorize(&self, attempt: &AdminAttempt<'_>) -> Result<(), AdminDenied> {
        match attempt.operation {
            AdminOperation::Events if attempt.account.as_str() == "globex" => {
                Err(AdminDenied::NotAllowed)
            }
            _ => Ok(()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_accounts_activity_never_stays_on_screen() {
    let start = Harness::with_authorizer(NoTrailForGlobex);
    let Some(page) = Page::open_on(1280, 900, start).await else {
        return;
    };
    page.harness.create("acme", None).await;
    page.show_keys(TOKEN).await;
    page.wait_for_activity("acme's create", |a| entries(a).len() == 1)
        .await;

    // Globex's keys load, its trail doesn't: acme's entry goes all the same.
    page.fill("#account", "globex").await;
    page.click("#show").await;
    page.wait_for_count("0 of 3 keys").await;
    let activity = page
        .wait_for_activity("the failed load", |a| {
            a["status"]
                .as_str()
                .is_some_and(|status| status.starts_with("Activity could not be loaded"))
        })
        .await;
    assert!(entries(&activity).is_empty(), "{activity:#}");
    assert_eq!(activity["older"], false);
}
