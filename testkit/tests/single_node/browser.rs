//! The web UI in a real browser: Debian's chromium, headless, driven through WebDriver
//! (chromium-driver, with fantoccini), against a real scheduler with tokens and two
//! labelled workers. It signs in, switches a schedule on and sees its runs appear, Quick
//! Runs the ridge sweep with a parameter, watches the run page turn green without a reload,
//! reads `train[3]`'s result location and logs and `evaluate[3]`'s R², cancels a long run,
//! sees both workers, is refused an admin action with a client token; and opens the page of
//! a run of 100,000 task runs, printing its load figures, scrolling and filtering its list.
//! Each step's screenshot is saved to target/ui-screenshots (the README's come from there).

use crate::support::fan_out;
use baton_client::Client;
use baton_scheduler::auth::{tokens, Role};
use baton_testkit::{eventually, free_port, Cluster};
use fantoccini::Locator::Css;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A headless chromium behind its chromedriver; both stop when dropped.
struct Browser {
    driver: Child,
    web: fantoccini::Client,
    shots: PathBuf,
}

impl Browser {
    async fn start() -> anyhow::Result<Browser> {
        let port = free_port()?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start chromedriver ({e}): scripts/install-test-servers.sh installs \
                     Debian's chromium-driver"
                )
            })?;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,800",
                         "--force-color-profile=srgb", "--hide-scrollbars"],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let web = eventually(Duration::from_secs(20), "chromedriver", || async {
            fantoccini::ClientBuilder::new(
                hyper_util::client::legacy::connect::HttpConnector::new(),
            )
            .capabilities(caps.clone())
            .connect(&url)
            .await
            .ok()
        })
        .await?;
        let shots = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/ui-screenshots"
        ));
        std::fs::create_dir_all(&shots)?;
        Ok(Browser { driver, web, shots })
    }

    /// Saves a screenshot of the window as `name`.png.
    async fn shot(&self, name: &str) -> anyhow::Result<()> {
        let png = self.web.screenshot().await?;
        std::fs::write(self.shots.join(format!("{name}.png")), png)?;
        Ok(())
    }

    /// The element `css` selects, once the page has one (a click's page may be on its way).
    async fn find(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        Ok(self
            .web
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Css(css))
            .await?)
    }

    /// Clicks the element `css` selects, again if a live refresh replaced it meanwhile.
    async fn click(&self, css: &str) -> anyhow::Result<()> {
        let mut tries = 0;
        loop {
            let clicked = match self.find(css).await {
                Ok(e) => e.click().await.map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            match clicked {
                Ok(()) => return Ok(()),
                Err(e) if tries >= 5 => return Err(e.context(format!("clicking {css}"))),
                Err(_) => tries += 1,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, css: &str) -> anyhow::Result<String> {
        Ok(self.find(css).await?.text().await?)
    }

    async fn js(&self, script: &str) -> anyhow::Result<Value> {
        Ok(self.web.execute(script, Vec::new()).await?)
    }

    /// Waits (polling the page as it is, never reloading it) until `script` returns true.
    async fn until(&self, limit: Duration, what: &str, script: &str) -> anyhow::Result<()> {
        eventually(limit, what, || async {
            self.js(script)
                .await
                .ok()
                .filter(|v| v.as_bool() == Some(true))
        })
        .await
        .map(drop)
    }

    async fn path(&self) -> anyhow::Result<String> {
        Ok(self.web.current_url().await?.path().to_string())
    }

    /// Waits until the page at `path` is loaded (after a click that navigates).
    async fn at(&self, path: &str) -> anyhow::Result<()> {
        let script = format!(
            "return location.pathname === {} && document.readyState === 'complete';",
            Value::String(path.to_string())
        );
        self.until(Duration::from_secs(20), path, &script).await
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn example(path: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(format!(
        "{}/../examples/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_drives_the_seeds_flows_in_a_real_browser() -> anyhow::Result<()> {
    let keys = tempfile::tempdir()?;
    let (admin, reader, worker) = (tokens::generate(), tokens::generate(), tokens::generate());
    let file = keys.path().join("tokens");
    std::fs::write(
        &file,
        [
            tokens::entry(Role::Admin, "ada", &admin),
            tokens::entry(Role::Client, "carl", &reader),
            tokens::entry(Role::Worker, "w-*", &worker),
        ]
        .join("\n"),
    )?;
    let port = free_port()?;
    let ui = format!("http://127.0.0.1:{port}");
    let mut cluster = Cluster::start(&[
        "--tokens-file",
        &file.display().to_string(),
        "--http",
        &format!("127.0.0.1:{port}"),
    ])
    .await?;
    // The trainer joins later: the sweep's page first shows why `train` waits.
    cluster.add_worker_with("w-local", "local", 16, &[], &[("BATON_TOKEN", &worker)])?;
    let c = Client::connect_with(&[cluster.url()], Some(&admin), None).await?;
    eventually(Duration::from_secs(20), "the first worker", || async {
        c.workers().await.ok().filter(|w| w.len() == 1)
    })
    .await?;
    // The seed's flows, registered through the API: the sweep, and the flow of flows with
    // its child. The parent's cron (every minute) runs every 2 s here, so that the test sees
    // a scheduled run appear within seconds.
    c.register_flow(example("ridge_sweep.yaml")?).await?;
    c.register_flow(example("flow_of_flows/train_model.yaml")?)
        .await?;
    let parent = example("flow_of_flows/ridge_sweep.yaml")?;
    anyhow::ensure!(
        parent.contains(r#"cron: "*/1 * * * *""#),
        "the seed's cron moved"
    );
    c.register_flow(parent.replace(r#"cron: "*/1 * * * *""#, r#"cron: "*/2 * * * * *""#))
        .await?;

    let b = Browser::start().await?;
    let outcome = drive(&b, &c, &ui, &mut cluster, &admin, &worker, &reader).await;
    if outcome.is_err() {
        let _ = b.shot("failure").await;
    }
    outcome
}

async fn drive(
    b: &Browser,
    c: &Client,
    ui: &str,
    cluster: &mut Cluster,
    admin: &str,
    worker: &str,
    reader: &str,
) -> anyhow::Result<()> {
    let long = Duration::from_secs(120);
    // Without a token: the sign-in form and no data.
    b.web.goto(&format!("{ui}/runs")).await?;
    assert_eq!(b.path().await?, "/login");
    assert!(
        !b.web.source().await?.contains("<td"),
        "data before signing in"
    );
    b.shot("01-sign-in").await?;
    b.find("#token").await?.send_keys(admin).await?;
    b.click("main button[type=submit]").await?;
    b.at("/").await?;

    // Flows: switch the flow of flows' schedule on, and see its runs appear.
    b.web.goto(&format!("{ui}/flows")).await?;
    let switch = r#"button[aria-label="schedule of ridge_sweep_fof"]"#;
    let state = b.find(switch).await?.attr("aria-checked").await?;
    assert_eq!(state.as_deref(), Some("false"));
    b.shot("02-flows").await?;
    b.click(switch).await?;
    let is = |v: &str| {
        format!(
            "const s = document.querySelector('{}'); return !!s && s.getAttribute('aria-checked') === '{v}';",
            switch.replace('\'', "\\'")
        )
    };
    b.until(Duration::from_secs(20), "the switch on", &is("true"))
        .await?;
    let scheduled = format!("{ui}/runs?project=examples&flow=ridge_sweep_fof");
    eventually(
        Duration::from_secs(60),
        "a scheduled run on the runs page",
        || async {
            b.web.goto(&scheduled).await.ok()?;
            let page = b.web.source().await.ok()?;
            page.contains("<td>schedule</td>").then_some(())
        },
    )
    .await?;
    b.shot("03-scheduled-runs").await?;
    b.web.goto(&format!("{ui}/flows")).await?;
    b.click(switch).await?;
    b.until(Duration::from_secs(20), "the switch off", &is("false"))
        .await?;

    // Quick Run of the sweep with a parameter: a value that is not JSON is stopped in the
    // page; a good one starts the run.
    b.click(r#"a[href="/flows/examples/ridge_sweep/run"]"#)
        .await?;
    let alphas = b.find("#p-alphas").await?;
    alphas.clear().await?;
    alphas.send_keys("[1.0, 0.1, oops").await?;
    b.click("#quick-run button[type=submit]").await?;
    let why = b
        .js("return document.querySelector('#p-alphas').validationMessage")
        .await?;
    assert!(
        why.as_str().is_some_and(|w| w.contains("not JSON")),
        "{why}"
    );
    assert_eq!(
        b.path().await?,
        "/flows/examples/ridge_sweep/run",
        "sent though not JSON"
    );
    alphas.clear().await?;
    alphas.send_keys("[1.0, 0.1, 0.01, 0.001, 0.0001]").await?;
    let seed = b.find("#p-seed").await?;
    seed.clear().await?;
    seed.send_keys("7").await?;
    b.shot("04-quick-run").await?;
    b.click("#quick-run button[type=submit]").await?;
    b.until(
        Duration::from_secs(20),
        "the run's page",
        "return location.pathname.startsWith('/runs/') && document.readyState === 'complete';",
    )
    .await?;
    let run_path = b.path().await?;
    let run_id = run_path.trim_start_matches("/runs/").to_string();
    let run = c.get_run(&run_id).await?;
    assert_eq!(run.parameters.get("seed").map(String::as_str), Some("7"));

    // The page says why `train` waits; once the trainer joins, the page moves by itself
    // until every task is green: no reload (the marker set now survives), the page's parts
    // refreshed from the run's events.
    b.js("window.batonMarker = 'same page'; return true")
        .await?;
    b.until(
        long,
        "why train waits",
        "return (document.querySelector('#facts') || {}).textContent.includes('trainer');",
    )
    .await?;
    b.shot("05-run-waiting").await?;
    cluster.add_worker_with(
        "w-trainer",
        "local,trainer",
        4,
        &[],
        &[("BATON_TOKEN", worker)],
    )?;
    b.until(
        long,
        "every task of the sweep green",
        "const n = [...document.querySelectorAll('svg.dag rect.n')]; \
         return n.length === 5 && n.every(r => r.classList.contains('s-COMPLETED')) \
           && !!document.querySelector('#facts .s-COMPLETED');",
    )
    .await?;
    let same = b
        .js("return window.batonMarker === 'same page' && !!document.body.dataset.refreshed")
        .await?;
    assert_eq!(
        same,
        Value::Bool(true),
        "the page was reloaded or never refreshed"
    );
    assert_eq!(b.path().await?, run_path);
    b.shot("06-run").await?;

    // train[3]: its result location and its logs.
    b.click(r#"a[href$="/tasks/train/3"]"#).await?;
    let location = b.text("#result-location").await?;
    assert!(location.starts_with("file://"), "{location}");
    let model = b.text("#value").await?;
    assert!(
        model.contains("model.json"),
        "the model's location: {model}"
    );
    // (Lines reach the scheduler on their own path: a finished run's page may be read
    // again until they are there.)
    let line = "trained a ridge model alpha=0.001";
    eventually(Duration::from_secs(30), "train[3]'s log line", || async {
        let logs = b.text("#logs").await.ok()?;
        if logs.contains(line) {
            return Some(());
        }
        b.web.refresh().await.ok()?;
        None
    })
    .await?;
    b.shot("07-task-run").await?;
    // evaluate[3]: the R² preview.
    b.web.goto(&format!("{ui}{run_path}?task=evaluate")).await?;
    b.click(r#"a[href$="/tasks/evaluate/3"]"#).await?;
    let value: Value = serde_json::from_str(&b.text("#value").await?)?;
    let r2 = value["r2"].as_f64().unwrap_or(f64::NAN);
    assert!(r2 > 0.5 && r2 <= 1.0, "R² {value}");

    // A long run, cancelled from its page.
    let sleeper = "name: sleeper\nlabels: [local]\ntasks:\n  - name: nap\n    builtin: sleep\n    inputs: {ms: 600000}\n";
    let long_run = c
        .run_source(sleeper.to_string(), BTreeMap::new(), String::new())
        .await?
        .run
        .ok_or_else(|| anyhow::anyhow!("no run"))?;
    b.web.goto(&format!("{ui}/runs/{}", long_run.id)).await?;
    b.until(
        long,
        "the nap running",
        "return !!document.querySelector('#list .s-RUNNING');",
    )
    .await?;
    b.click("button.danger").await?;
    b.until(
        long,
        "the run cancelled",
        "return !!document.querySelector('#facts .s-CANCELLED');",
    )
    .await?;
    b.shot("08-cancelled").await?;
    let cancelled = c.get_run(&long_run.id).await?;
    assert_eq!(
        baton_common::state::run_state_name(cancelled.state),
        "CANCELLED"
    );

    // Both workers with their labels.
    b.web.goto(&format!("{ui}/workers")).await?;
    let workers = b.text("main table").await?;
    for w in ["w-local", "w-trainer", "trainer"] {
        assert!(workers.contains(w), "{w}: {workers}");
    }
    b.shot("09-workers").await?;
    b.web.goto(&format!("{ui}/schedules")).await?;
    assert!(b.text("main").await?.contains("ridge_sweep_fof"));
    b.web.goto(&format!("{ui}/")).await?;
    b.shot("00-dashboard").await?;

    big_run(b, c, ui).await?;

    // A client token reads but may not change limits (nor register flows).
    b.click("header .signout button").await?;
    b.at("/login").await?;
    b.find("#token").await?.send_keys(reader).await?;
    b.click("main button[type=submit]").await?;
    b.at("/").await?;
    b.web.goto(&format!("{ui}/limits")).await?;
    b.find("#set-limit input[name=tag]")
        .await?
        .send_keys("gpu")
        .await?;
    b.find("#set-limit input[name=limit]")
        .await?
        .send_keys("2")
        .await?;
    b.click("#set-limit button").await?;
    b.until(
        Duration::from_secs(20),
        "the refusal",
        "return !!document.querySelector('main .error');",
    )
    .await?;
    let refused = b.text("main").await?;
    assert!(refused.contains("403"), "{refused}");
    assert!(
        c.list_limits().await?.is_empty(),
        "a client token set a limit"
    );
    let as_reader = Client::connect_with(&[cluster.url()], Some(reader), None).await?;
    let err = as_reader
        .register_flow(example("ridge_sweep.yaml")?)
        .await
        .expect_err("a client token registered a flow");
    assert!(
        err.to_string().to_lowercase().contains("permission"),
        "{err}"
    );
    Ok(())
}

/// The page of a run of 100,000 task runs: its load figures (printed, not asserted: this
/// machine's speed is no test's business), then its list scrolled and filtered by state.
async fn big_run(b: &Browser, c: &Client, ui: &str) -> anyhow::Result<()> {
    let n = 100_000;
    let run = c
        .run_source(fan_out("big_map", n, 0), BTreeMap::new(), String::new())
        .await?
        .run
        .ok_or_else(|| anyhow::anyhow!("no run"))?;
    let done = c.wait(&run.id).await?;
    assert_eq!(baton_common::state::run_state_name(done.state), "COMPLETED");
    let page = format!("{ui}/runs/{}?task=work", run.id);
    let mut figures = Vec::new();
    for _ in 0..5 {
        b.web.goto(&page).await?;
        b.until(
            Duration::from_secs(20),
            "the first frame",
            "return typeof window.batonFirstFrame === 'number';",
        )
        .await?;
        let f = b
            .js("const n = performance.getEntriesByType('navigation')[0]; \
                 return [n.responseStart - n.requestStart, window.batonFirstFrame, \
                         n.domInteractive, n.domContentLoadedEventEnd, n.transferSize];")
            .await?;
        figures.push(f);
    }
    let col = |i: usize| {
        let mut v: Vec<f64> = figures.iter().filter_map(|f| f[i].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let report = format!(
        "run page of {n} task runs, median of 5 loads: server {:.1} ms, first frame {:.1} ms, \
         interactive {:.1} ms, DOM ready {:.1} ms, {:.0} bytes",
        col(0),
        col(1),
        col(2),
        col(3),
        col(4)
    );
    println!("{report}");
    std::fs::write(b.shots.join("big-run.txt"), format!("{report}\n"))?;
    assert!(b.text("#list").await?.contains(&format!("{n} task runs")));
    b.shot("10-big-run").await?;

    // Scrolling the mapped task's list fetches its next rows, in order.
    b.js("document.querySelector('.scroll').dataset.test = 'kept'; return true")
        .await?;
    for _ in 0..3 {
        let before = b
            .js("return document.querySelectorAll('.scroll tbody tr').length")
            .await?;
        b.js(
            "const s = document.querySelector('.scroll'); s.scrollTop = s.scrollHeight; \
              s.dispatchEvent(new Event('scroll')); return true",
        )
        .await?;
        let more = format!(
            "return document.querySelectorAll('.scroll tbody tr').length > {}",
            before.as_u64().unwrap_or(0)
        );
        b.until(Duration::from_secs(20), "more rows", &more).await?;
    }
    let last = b
        .js("const r = document.querySelectorAll('.scroll tbody tr'); \
             return r.length + ' ' + r[r.length - 1].querySelector('a').textContent")
        .await?;
    assert_eq!(last.as_str(), Some("200 work[199]"), "{last}");

    // Filtering by state: every one completed, none failed.
    for state in ["COMPLETED", "FAILED"] {
        let filter = b.find("#list form select[name=state]").await?;
        filter.select_by_value(state).await?;
        b.click("#list form button").await?;
        let shown = format!(
            "return location.search.includes('state={state}') && document.readyState === 'complete';"
        );
        b.until(Duration::from_secs(20), state, &shown).await?;
        if state == "COMPLETED" {
            assert!(b.text("#list").await?.contains(&format!("{n} task runs")));
        }
    }
    let none = b.text("#list").await?;
    assert!(
        none.contains("0 task runs") && !none.contains("work["),
        "{none}"
    );
    Ok(())
}
