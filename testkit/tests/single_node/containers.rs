//! Container tasks on the real Docker engine, run by real workers (`--allow container`) in
//! `baton-runtime:local` (a Debian image `scripts/build-images.sh` builds): the process
//! contract in a container, a missing image with `pull: never`, timeouts and cancellation
//! leaving no container, a worker killed with -9 (its container removed when it starts
//! again, the attempt re-run elsewhere), and workers that do not allow containers.

use baton_client::Client;
use baton_proto as pb;
use baton_testkit::Cluster;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

const IMAGE: &str = "baton-runtime:local";

/// The containers (running or not) of `run`'s attempts.
fn containers_of(run: &str) -> anyhow::Result<Vec<String>> {
    let out = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter"])
        .arg(format!("label=dev.baton.run={run}"))
        .output()?;
    anyhow::ensure!(out.status.success(), "docker ps failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

fn image_present() -> anyhow::Result<()> {
    let found = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()?;
    anyhow::ensure!(
        found.status.success(),
        "image {IMAGE} is missing: build the images first (scripts/build-images.sh)"
    );
    Ok(())
}

async fn start(c: &Client, flow: &str) -> anyhow::Result<pb::FlowRun> {
    let created = c
        .run_source(flow.to_string(), BTreeMap::new(), String::new())
        .await?;
    created.run.ok_or_else(|| anyhow::anyhow!("no run"))
}

async fn task(c: &Client, run: &str, name: &str) -> anyhow::Result<pb::TaskRun> {
    let trs = c.task_runs(run, true).await?;
    trs.into_iter()
        .find(|t| t.task == name)
        .ok_or_else(|| anyhow::anyhow!("no task {name}"))
}

/// Waits until one container of `run` exists.
async fn container_up(run: &str) -> anyhow::Result<()> {
    baton_testkit::eventually(Duration::from_secs(30), "a container", || async {
        (containers_of(run).ok()?.len() == 1).then_some(())
    })
    .await
}

/// Waits until `name` of `run` is running.
async fn running(c: &Client, run: &str, name: &str) -> anyhow::Result<()> {
    baton_testkit::eventually(Duration::from_secs(60), "the task to run", || async {
        let t = task(c, run, name).await.ok()?;
        (t.state == pb::TaskState::Running as i32).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_tasks_keep_the_process_contract_and_leave_nothing_behind() -> anyhow::Result<()>
{
    image_present()?;
    let mut cluster = Cluster::start(&[]).await?;
    let aws = [
        ("AWS_ACCESS_KEY_ID", "AKIDCONTAINERTEST"),
        ("AWS_SECRET_ACCESS_KEY", "container-secret-5e1f"),
    ];
    cluster.add_worker_with("docker-1", "docker", 2, &["--allow", "container"], &aws)?;
    let c = Client::connect(&cluster.url()).await?;

    // Inputs on stdin, logs from stdout and stderr, the last stdout line the result; the
    // task's environment and baton's variables inside.
    let flow = format!(
        r#"
name: in_a_container
tasks:
  - name: seven
    builtin: echo
    inputs: {{value: 7}}
  - name: square
    container:
      image: {IMAGE}
      command: /bin/sh
      args: ["-c", "read -r inputs; echo \"got $inputs\" >&2; echo \"task=$BATON_TASK greeting=$GREETING\"; n=$(echo \"$inputs\" | sed 's/[^0-9]//g'); echo $((n * n))"]
      env: {{GREETING: hello}}
      pull: never
    inputs: {{n: {{result: seven}}}}
    labels: [docker]
"#
    );
    let run = start(&c, &flow).await?;
    let done = tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
    cluster.assert_completed(&done);
    assert_eq!(task(&c, &run.id, "square").await?.value, "49");
    let (code, out, err) = baton_testkit::baton_cli(&cluster.url(), &["logs", &run.id])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#"got {"n":7}"#), "{out}");
    assert!(out.contains("task=square greeting=hello"), "{out}");
    assert!(containers_of(&run.id)?.is_empty());

    // The worker's AWS credentials reach a container that asks for them as a file, not in
    // its configuration (its environment, which `docker inspect` shows); one that does not
    // ask gets neither.
    let asks = r#"cat >/dev/null; k=$(grep -c container-secret-5e1f "$AWS_SHARED_CREDENTIALS_FILE"); e=$(env | grep -c container-secret-5e1f); echo "[$k, $e]""#;
    let does_not = r#"cat >/dev/null; echo "\"${AWS_SHARED_CREDENTIALS_FILE:-none}\"""#;
    let flow = format!(
        "name: credentials\ntasks:\n  - name: asks\n    container: {{image: {IMAGE}, command: /bin/sh, args: [\"-c\", {asks:?}], aws_credentials: true, pull: never}}\n    labels: [docker]\n  - name: does_not\n    container: {{image: {IMAGE}, command: /bin/sh, args: [\"-c\", {does_not:?}], pull: never}}\n    labels: [docker]\n"
    );
    let run = start(&c, &flow).await?;
    let done = tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
    cluster.assert_completed(&done);
    assert_eq!(task(&c, &run.id, "asks").await?.value, "[1,0]");
    assert_eq!(task(&c, &run.id, "does_not").await?.value, "\"none\"");

    // A missing image with `pull: never` fails at once, without retries.
    let flow = r#"
name: no_image
tasks:
  - name: t
    container: {image: "baton-no-such-image:none", pull: never}
    retries: {count: 3}
    labels: [docker]
"#;
    let run = start(&c, flow).await?;
    let failed = tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
    assert_eq!(failed.state, pb::RunState::Failed as i32);
    let t = task(&c, &run.id, "t").await?;
    assert!(t.error.contains("pull: never"), "{}", t.error);
    assert_eq!(t.attempt, 1, "retried: {t:?}");

    // A timed-out attempt and a cancelled run leave no container.
    let sleeper = |name: &str, timeout: &str| {
        format!(
            "name: {name}\ntasks:\n  - name: t\n    container: {{image: {IMAGE}, command: sleep, args: [\"600\"], pull: never}}\n    labels: [docker]\n{timeout}"
        )
    };
    let run = start(&c, &sleeper("times_out", "    timeout_s: 2\n")).await?;
    let failed = tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
    assert_eq!(failed.state, pb::RunState::Failed as i32);
    assert!(task(&c, &run.id, "t").await?.error.contains("timed out"));
    // The scheduler fails the attempt at its deadline and tells the worker, which kills
    // and removes the container.
    baton_testkit::eventually(Duration::from_secs(10), "the container gone", || async {
        containers_of(&run.id).ok()?.is_empty().then_some(())
    })
    .await?;

    let run = start(
        &c,
        &sleeper("cancelled", "    resources: {slots: 2, memory_mb: 64}\n"),
    )
    .await?;
    running(&c, &run.id, "t").await?;
    container_up(&run.id).await?;
    // The task's resources are the container's limits, and its labels name the attempt.
    let id = containers_of(&run.id)?.remove(0);
    let out = Command::new("docker")
        .args(["inspect", "--format"])
        .arg("{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{index .Config.Labels \"dev.baton.worker\"}} {{index .Config.Labels \"dev.baton.task\"}} {{index .Config.Labels \"dev.baton.attempt\"}}")
        .arg(&id)
        .output()?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("2000000000 {} docker-1 t 1", 64 << 20)
    );
    c.cancel_run(&run.id).await?;
    tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
    baton_testkit::eventually(Duration::from_secs(10), "the container gone", || async {
        containers_of(&run.id).ok()?.is_empty().then_some(())
    })
    .await?;

    // kill -9 of the worker while its container runs: a second worker re-runs the attempt,
    // and the container is removed when the killed worker starts again.
    let flow = format!(
        "name: killed\ntasks:\n  - name: t\n    container: {{image: {IMAGE}, command: /bin/sh, args: [\"-c\", \"if [ $BATON_ATTEMPT = 1 ]; then sleep 600; fi; echo 5\"], pull: never}}\n    labels: [docker]\n    retries: {{count: 2}}\n"
    );
    let run = start(&c, &flow).await?;
    running(&c, &run.id, "t").await?;
    container_up(&run.id).await?;
    cluster.workers[0].kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        containers_of(&run.id)?.len(),
        1,
        "the killed worker's container"
    );
    cluster.add_worker_with("docker-2", "docker", 2, &["--allow", "container"], &[])?;
    let done = tokio::time::timeout(Duration::from_secs(90), c.wait(&run.id)).await??;
    cluster.assert_completed(&done);
    let t = task(&c, &run.id, "t").await?;
    assert_eq!((t.value.as_str(), t.worker.as_str()), ("5", "docker-2"));
    cluster.add_worker_with("docker-1", "docker", 2, &["--allow", "container"], &[])?;
    baton_testkit::eventually(
        Duration::from_secs(30),
        "the left container removed",
        || async { containers_of(&run.id).ok()?.is_empty().then_some(()) },
    )
    .await?;
    Ok(())
}

/// A container task never reaches a worker that does not allow containers: it waits,
/// saying why, and fails as unrunnable when none comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_tasks_wait_for_a_worker_that_allows_them() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&["--unrunnable-timeout-ms", "4000"]).await?;
    cluster.add_worker_with("processes-only", "local", 2, &["--allow", "process"], &[])?;
    let c = Client::connect(&cluster.url()).await?;
    let flow = format!(
        "name: no_docker\ntasks:\n  - name: t\n    container: {{image: {IMAGE}, command: \"true\"}}\n"
    );
    let run = start(&c, &flow).await?;
    let waiting = baton_testkit::eventually(Duration::from_secs(30), "a reason", || async {
        let t = task(&c, &run.id, "t").await.ok()?;
        (!t.waiting_reason.is_empty()).then_some(t)
    })
    .await?;
    assert!(
        waiting.waiting_reason.contains("baton:container"),
        "{}",
        waiting.waiting_reason
    );
    let failed = tokio::time::timeout(Duration::from_secs(60), c.wait(&run.id)).await??;
    assert_eq!(failed.state, pb::RunState::Failed as i32);
    let t = task(&c, &run.id, "t").await?;
    assert!(t.worker.is_empty(), "{t:?}");
    assert!(t.error.contains("unrunnable"), "{}", t.error);
    Ok(())
}

/// The docker example (examples/docker): the flow of flows whose child trains in a container
/// of baton-ridge:local scores the six models exactly as the single-flow sweep does for the
/// same seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_example_scores_as_the_single_flow_sweep() -> anyhow::Result<()> {
    image_present()?;
    let mut cluster = Cluster::start(&[]).await?;
    cluster.add_worker("trainer", "local,trainer", 4)?;
    cluster.add_worker_with("docker", "docker", 2, &["--allow", "container"], &[])?;
    let c = Client::connect(&cluster.url()).await?;
    let read = |path: &str| {
        std::fs::read_to_string(format!("{}/../examples/{path}", env!("CARGO_MANIFEST_DIR")))
    };
    c.register_flow(read("docker/train_model.yaml")?).await?;
    let docker = start(&c, &read("docker/ridge_sweep.yaml")?).await?;
    let done = tokio::time::timeout(Duration::from_secs(120), c.wait(&docker.id)).await??;
    cluster.assert_completed(&done);
    let single = start(&c, &read("ridge_sweep.yaml")?).await?;
    let done = tokio::time::timeout(Duration::from_secs(120), c.wait(&single.id)).await??;
    cluster.assert_completed(&done);
    let in_containers = crate::support::ridge_scores(&c.task_runs(&docker.id, true).await?)?;
    let built_in = crate::support::ridge_scores(&c.task_runs(&single.id, true).await?)?;
    assert_eq!(in_containers.len(), 6, "{in_containers:?}");
    assert_eq!(
        in_containers.keys().collect::<Vec<_>>(),
        built_in.keys().collect::<Vec<_>>()
    );
    for (alpha, r2) in &in_containers {
        let expected = built_in[alpha];
        assert!(
            (r2 - expected).abs() < 1e-9,
            "alpha {alpha}: {r2} in a container, {expected} built in"
        );
    }
    // Each child ran its training in a container on the docker worker.
    let children: Vec<pb::FlowRun> = c
        .list_runs(0)
        .await?
        .into_iter()
        .filter(|r| r.flow == "ridge_train_docker")
        .collect();
    assert_eq!(children.len(), 6);
    for child in &children {
        let fit = task(&c, &child.id, "fit").await?;
        assert_eq!(fit.worker, "docker", "{fit:?}");
    }
    Ok(())
}

/// A worker that hears from no scheduler for its leader lease stops its containers, as it
/// stops processes (the leader will have re-dispatched the attempts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_loses_its_scheduler_removes_its_containers() -> anyhow::Result<()> {
    image_present()?;
    let mut cluster = Cluster::start(&[]).await?;
    let lease = ["--allow", "container", "--leader-lease-ms", "3000"];
    cluster.add_worker_with("docker-lonely", "docker", 2, &lease, &[])?;
    let c = Client::connect(&cluster.url()).await?;
    let flow = format!(
        "name: lonely\ntasks:\n  - name: t\n    container: {{image: {IMAGE}, command: sleep, args: [\"600\"], pull: never}}\n    labels: [docker]\n"
    );
    let run = start(&c, &flow).await?;
    running(&c, &run.id, "t").await?;
    container_up(&run.id).await?;
    cluster.scheduler.kill9();
    baton_testkit::eventually(Duration::from_secs(20), "the container gone", || async {
        containers_of(&run.id).ok()?.is_empty().then_some(())
    })
    .await?;
    Ok(())
}
