//! A run with the tree of child runs its sub-flow tasks started, as `baton show` prints
//! it (text and JSON). Fetching the tree is the command's business; this only renders.

use super::{run_json, run_line, task_table};
use baton_proto as pb;
use serde_json::{json, Value};

/// A run, its task runs and the child runs its sub-flow task runs started.
#[derive(Debug, Clone, Default)]
pub struct RunTree {
    pub run: pb::FlowRun,
    pub task_runs: Vec<pb::TaskRun>,
    pub children: Vec<ChildRun>,
    /// Child runs that were not fetched (past the limits on how many or how deep).
    pub children_left_out: usize,
}

/// One child run, as the task run that started it names it.
#[derive(Debug, Clone)]
pub struct ChildRun {
    pub task: String,
    pub map_index: i64,
    pub run_id: String,
    /// The child's own tree, or why it could not be read.
    pub tree: Result<RunTree, String>,
}

impl RunTree {
    /// A run with its task runs and no children (yet).
    pub fn new(run: pb::FlowRun, task_runs: Vec<pb::TaskRun>) -> Self {
        RunTree {
            run,
            task_runs,
            children: Vec::new(),
            children_left_out: 0,
        }
    }

    /// The task runs that started a child run: (task, map index, child run id).
    pub fn child_links(&self) -> Vec<(String, i64, String)> {
        self.task_runs
            .iter()
            .filter(|t| !t.child_run_id.is_empty())
            .map(|t| (t.task.clone(), t.map_index, t.child_run_id.clone()))
            .collect()
    }
}

fn task_ref(task: &str, map_index: i64) -> String {
    if map_index < 0 {
        task.to_string()
    } else {
        format!("{task}[{map_index}]")
    }
}

/// `parent: RUN_ID task TASK[INDEX]` for a child run; None for a top-level run.
pub fn parent_line(r: &pb::FlowRun) -> Option<String> {
    if r.parent_run_id.is_empty() {
        return None;
    }
    Some(format!(
        "parent: {} task {}",
        r.parent_run_id,
        task_ref(&r.parent_task, r.parent_map_index)
    ))
}

/// What `baton show` prints: the run line, the task table, the parent line of a child run,
/// then the child runs, indented by depth.
pub fn tree_text(t: &RunTree) -> String {
    let mut out = run_line(&t.run);
    out.push('\n');
    out.push_str(&task_table(&t.task_runs));
    if let Some(p) = parent_line(&t.run) {
        out.push_str(&p);
        out.push('\n');
    }
    if !t.children.is_empty() || t.children_left_out > 0 {
        out.push_str("children:\n");
        children_text(t, 1, &mut out);
    }
    out
}

fn left_out_line(n: usize) -> String {
    let s = if n == 1 { "" } else { "s" };
    format!("... {n} more child run{s} not shown")
}

fn children_text(t: &RunTree, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    for c in &t.children {
        let head = format!("{pad}{}: ", task_ref(&c.task, c.map_index));
        match &c.tree {
            Ok(child) => {
                let line = run_line(&child.run);
                let mut lines = line.lines();
                if let Some(first) = lines.next() {
                    out.push_str(&head);
                    out.push_str(first);
                    out.push('\n');
                }
                for rest in lines {
                    out.push_str(&pad);
                    out.push_str(rest);
                    out.push('\n');
                }
                children_text(child, depth + 1, out);
            }
            Err(e) => out.push_str(&format!("{head}run {} (unavailable: {e})\n", c.run_id)),
        }
    }
    if t.children_left_out > 0 {
        out.push_str(&format!("{pad}{}\n", left_out_line(t.children_left_out)));
    }
}

/// `baton show --json`: the run's JSON with `children` (each child's, recursively) and
/// `children_left_out` when some were not fetched.
pub fn tree_json(t: &RunTree) -> Value {
    let mut v = run_json(&t.run, &t.task_runs);
    let children: Vec<Value> = t
        .children
        .iter()
        .map(|c| match &c.tree {
            Ok(child) => tree_json(child),
            Err(e) => json!({
                "id": c.run_id,
                "parent": {"run_id": t.run.id, "task": c.task, "map_index": c.map_index},
                "unavailable": e,
            }),
        })
        .collect();
    v["children"] = Value::Array(children);
    if t.children_left_out > 0 {
        v["children_left_out"] = json!(t.children_left_out);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, flow: &str, parent: Option<(&str, &str, i64)>) -> pb::FlowRun {
        let (parent_run_id, parent_task, parent_map_index) = parent.unwrap_or(("", "", 0));
        pb::FlowRun {
            id: id.into(),
            project: "demo".into(),
            flow: flow.into(),
            version: 1,
            state: pb::RunState::Completed as i32,
            started_ms: 1_000,
            ended_ms: 2_500,
            tasks_total: 1,
            tasks_done: 1,
            parent_run_id: parent_run_id.into(),
            parent_task: parent_task.into(),
            parent_map_index,
            trigger: if parent.is_some() { "parent" } else { "api" }.into(),
            ..Default::default()
        }
    }

    fn sub_task(index: i64, child: &str) -> pb::TaskRun {
        pb::TaskRun {
            run_id: "r1".into(),
            task: "each".into(),
            map_index: index,
            state: pb::TaskState::Completed as i32,
            attempt: 1,
            child_run_id: child.into(),
            ..Default::default()
        }
    }

    fn family() -> RunTree {
        let mut root = RunTree::new(
            run("r1", "outer", None),
            vec![sub_task(0, "c1"), sub_task(1, "c2")],
        );
        let c1 = RunTree::new(run("c1", "inner", Some(("r1", "each", 0))), vec![]);
        let mut c2 = RunTree::new(run("c2", "inner", Some(("r1", "each", 1))), vec![]);
        c2.run.state = pb::RunState::Failed as i32;
        c2.run.error = "boom".into();
        c2.children_left_out = 1;
        root.children = vec![
            ChildRun {
                task: "each".into(),
                map_index: 0,
                run_id: "c1".into(),
                tree: Ok(c1),
            },
            ChildRun {
                task: "each".into(),
                map_index: 1,
                run_id: "c2".into(),
                tree: Ok(c2),
            },
        ];
        root
    }

    #[test]
    fn a_parent_shows_its_two_children_indented() {
        let text = tree_text(&family());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "run r1 of demo/outer v1: COMPLETED (1/1 task runs done, 1.50s)"
        );
        assert!(lines[1].starts_with("TASK"), "{text}");
        assert!(lines[2].contains("child:c1"), "{text}");
        assert!(lines[3].contains("child:c2"), "{text}");
        assert_eq!(
            &lines[4..],
            &[
                "children:",
                "  each[0]: run c1 of demo/inner v1: COMPLETED (1/1 task runs done, 1.50s)",
                "  each[1]: run c2 of demo/inner v1: FAILED (1/1 task runs done, 1.50s)",
                "    error: boom",
                "    ... 1 more child run not shown",
            ],
            "{text}"
        );
    }

    #[test]
    fn a_child_names_its_parent() {
        let root = family();
        let Ok(child) = &root.children[1].tree else {
            panic!("no child");
        };
        let text = tree_text(child);
        assert!(
            text.contains(
                "\nparent: r1 task each[1]\nchildren:\n  ... 1 more child run not shown\n"
            ),
            "{text}"
        );
        assert_eq!(parent_line(&root.run), None);
    }

    #[test]
    fn the_json_tree_nests_children_with_their_parent() {
        let mut root = family();
        root.children.push(ChildRun {
            task: "late".into(),
            map_index: -1,
            run_id: "c3".into(),
            tree: Err("not found".into()),
        });
        let j = tree_json(&root);
        assert!(j.get("parent").is_none(), "{j}");
        assert_eq!(j["children"][0]["id"], "c1");
        assert_eq!(j["children"][0]["parent"]["run_id"], "r1");
        assert_eq!(j["children"][1]["parent"]["map_index"], 1);
        assert_eq!(j["children"][1]["children_left_out"], 1);
        assert_eq!(j["children"][2]["unavailable"], "not found");
        assert_eq!(j["task_runs"][0]["child_run_id"], "c1");
        assert_eq!(j["children"][0]["children"], json!([]));
    }
}
