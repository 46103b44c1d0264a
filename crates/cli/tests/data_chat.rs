//! The chat side of `mathcoder data` through a scripted OpenAI chat server
//! (`mathcoder_replay::chat`): `seed` and `distill` with the chat teacher in both styles (tool
//! calls and fences; right and wrong answers; malformed replies, bad tool calls, 5xx, hangs),
//! `interpolate` (accepted and rejected replies, resumed) and `judge` (both orders). The kept
//! sets are exactly the expected ones; failures are typed attempts, never crashes.

use mathcoder_replay::chat::{
    serve_chat, ChatFault, ChatScript, ChatServer, ScriptCall, ScriptReply, ScriptTurn,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

mod common;
use common::bin;

/// A running scripted server and the runtime serving it.
struct Scripted {
    server: ChatServer,
    _rt: tokio::runtime::Runtime,
}

fn start(script: ChatScript) -> Scripted {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(serve_chat(script, "127.0.0.1:0".parse().unwrap()))
        .unwrap();
    Scripted { server, _rt: rt }
}

/// `mathcoder data ARGS... --endpoint URL` with short timeouts and quick retries.
fn data(s: &Scripted, args: &[&str]) -> std::process::Output {
    let out = bin()
        .arg("data")
        .args(args)
        .args(["--endpoint", &s.server.url(), "--model", "scripted"])
        .args([
            "--request-timeout",
            "1",
            "--retries",
            "3",
            "--retry-backoff",
            "0.01",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `data seed|distill` of `problems` with the chat teacher in `style` (math conventions).
fn teach(
    s: &Scripted,
    command: &str,
    problems: &Path,
    style: &str,
    out: &Path,
    extra: &[&str],
) -> std::process::Output {
    let flag = if command == "seed" {
        "--source"
    } else {
        "--problems"
    };
    let mut args = vec![
        command,
        flag,
        problems.to_str().unwrap(),
        "--conventions",
        "math",
        "--teacher",
        "chat",
        "--chat-style",
        style,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    data(s, &args)
}

fn write_problems(path: &Path, problems: &[(&str, &str, Option<&str>)]) {
    let mut s = String::new();
    for (id, q, a) in problems {
        s.push_str(
            &json!({"id": id, "dataset": "scripted", "question": q, "answer": a}).to_string(),
        );
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// problem id -> kept record blocks as (type, content).
fn kept(out: &Path) -> BTreeMap<String, Vec<(String, String)>> {
    rows(&out.join("data.jsonl"))
        .into_iter()
        .map(|r| {
            let blocks = r["messages"][2]["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    (
                        b["type"].as_str().unwrap().to_string(),
                        b["content"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            let key = format!(
                "{}#{}",
                r["provenance"]["problem_id"].as_str().unwrap(),
                r["provenance"]["sample"]
            );
            (key, blocks)
        })
        .collect()
}

/// problem id -> (outcome, detail).
fn attempts(out: &Path) -> BTreeMap<String, (String, String)> {
    rows(&out.join("attempts.jsonl"))
        .into_iter()
        .map(|a| {
            (
                a["problem_id"].as_str().unwrap().to_string(),
                (
                    a["outcome"].as_str().unwrap().to_string(),
                    a["detail"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

/// The request of the problem tagged `tag` that carried one code call and its output.
fn second_request(s: &Scripted, tag: &str) -> Value {
    s.server
        .requests()
        .into_iter()
        .find(|r| {
            r["messages"][1]["content"].as_str().unwrap().contains(tag)
                && r["messages"].as_array().unwrap().len() == 4
        })
        .unwrap()
}

fn b(kind: &str, content: &str) -> (String, String) {
    (kind.to_string(), content.to_string())
}

fn text(s: &str) -> ScriptTurn {
    ScriptReply::text(s).into()
}

fn calls(content: Option<&str>, calls: &[(&str, &str)]) -> ScriptTurn {
    ScriptReply::calls(
        content,
        calls
            .iter()
            .map(|(id, c)| ScriptCall::python(id, c))
            .collect(),
    )
    .into()
}

fn faulty(faults: Vec<ChatFault>, t: ScriptTurn) -> ScriptTurn {
    ScriptTurn { faults, ..t }
}

#[test]
fn seed_with_the_chat_teacher_using_tool_calls() {
    let script = ChatScript::default()
        .on("[right]", None, vec![calls(None, &[("c1", "x = 6*7\nx")]), text("The answer is \\boxed{42}.")])
        .on(
            "[two calls]",
            None,
            vec![
                calls(Some("Let me compute."), &[("a", "a = 3"), ("b", "print(a**2)")]),
                text("So it is \\boxed{9}."),
            ],
        )
        .on("[wrong]", None, vec![calls(None, &[("c", "2+3")]), text("\\boxed{5}")])
        .on(
            "[bad arguments]",
            None,
            vec![ScriptReply::calls(
                None,
                vec![ScriptCall {
                    id: Some("c".into()),
                    name: "python".into(),
                    arguments: json!("x = 1"),
                }],
            )
            .into()],
        )
        .on(
            "[no id]",
            None,
            vec![ScriptReply::RawMessage(json!({"role": "assistant", "content": null, "tool_calls": [
                {"type": "function", "function": {"name": "python", "arguments": "{\"code\": \"1\"}"}}
            ]}))
            .into()],
        )
        .on(
            "[5xx then fine]",
            None,
            vec![faulty(
                vec![ChatFault::Status(500), ChatFault::Status(503)],
                text("No code needed: \\boxed{7}"),
            )],
        )
        .on(
            "[hang then fine]",
            None,
            vec![
                calls(None, &[("h", "8")]),
                faulty(vec![ChatFault::Hang], text("\\boxed{8}")),
            ],
        )
        .on(
            "[malformed then fine]",
            None,
            vec![faulty(
                vec![ChatFault::BadJson, ChatFault::NoChoices],
                text("\\boxed{3}"),
            )],
        )
        .on(
            "[always 500]",
            None,
            vec![faulty(vec![ChatFault::Status(500); 10], text("\\boxed{1}"))],
        )
        .on("[no answer]", None, vec![text("It is about eleven.")])
        .on(
            "[round limit]",
            None,
            vec![
                calls(None, &[("r1", "1")]),
                calls(None, &[("r2", "2")]),
                calls(None, &[("r3", "3")]),
                text("\\boxed{3}"),
            ],
        );
    let s = start(script);
    let dir = tempfile::tempdir().unwrap();
    let problems = dir.path().join("problems.jsonl");
    write_problems(
        &problems,
        &[
            ("right", "[right] What is 6 times 7?", Some("42")),
            ("two", "[two calls] Square 3.", Some("9")),
            ("wrong", "[wrong] 2 + 4?", Some("6")),
            ("badargs", "[bad arguments] 1?", Some("1")),
            ("noid", "[no id] 1?", Some("1")),
            ("5xx", "[5xx then fine] 3 + 4?", Some("7")),
            ("hang", "[hang then fine] 8?", Some("8")),
            ("malformed", "[malformed then fine] 3?", Some("3")),
            ("always500", "[always 500] 1?", Some("1")),
            ("noanswer", "[no answer] 11?", Some("11")),
            ("rounds", "[round limit] 3?", Some("3")),
        ],
    );
    let out = dir.path().join("run");
    let o = teach(
        &s,
        "seed",
        &problems,
        "tools",
        &out,
        &["--chat-max-rounds", "3", "--concurrency", "4"],
    );
    let k = kept(&out);
    assert_eq!(
        k.keys().cloned().collect::<BTreeSet<_>>(),
        ["right#0", "two#0", "5xx#0", "hang#0", "malformed#0"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(
        k["right#0"],
        [
            b("code", "x = 6*7\nx"),
            b("execution", "42"),
            b("text", "The answer is \\boxed{42}."),
            b("text", "42")
        ]
    );
    assert_eq!(
        k["two#0"],
        [
            b("text", "Let me compute."),
            b("code", "a = 3"),
            b("execution", "<empty_execution>"),
            b("code", "print(a**2)"),
            b("execution", "9"),
            b("text", "So it is \\boxed{9}."),
            b("text", "9")
        ]
    );
    let a = attempts(&out);
    assert_eq!(a.len(), 11);
    let expect = [
        ("wrong", "wrong", ""),
        (
            "badargs",
            "unconverted",
            "bad_tool_call: tool call arguments are not a JSON object",
        ),
        (
            "noid",
            "unconverted",
            "bad_tool_call: tool call without an id",
        ),
        ("always500", "failed", "backend:"),
        ("noanswer", "unconverted", "no_answer"),
        // The same call in every reply: stopped as a repetition at the third (where the round
        // limit of 3 would have ended it too).
        ("rounds", "unconverted", "repetition"),
    ];
    for (id, outcome, detail) in expect {
        assert_eq!(a[id].0, outcome, "{id}: {:?}", a[id]);
        assert!(a[id].1.contains(detail), "{id}: {:?}", a[id]);
    }
    // The tool message carried the real output, answering its call.
    let second = second_request(&s, "[right]");
    assert_eq!(
        second["messages"][3],
        json!({"role": "tool", "tool_call_id": "c1", "content": "42"})
    );
    assert_eq!(second["tools"][0]["function"]["name"], "python");
    assert_eq!(
        second["messages"][0]["content"],
        mathcoder_lce::chat::system_prompt(mathcoder_lce::chat::ChatStyle::Tools)
    );
    eprintln!("{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn seed_and_distill_with_the_chat_teacher_using_fences() {
    let script = ChatScript::default()
        // The model runs on past its fence and guesses the output: the stop sequence cuts it.
        .on(
            "[fence]",
            None,
            vec![
                text(
                    "We multiply.\n```python\nprint(6*7)\n```\n```output\n41\n```\nSo \\boxed{41}.",
                ),
                text("The output is 42, so the answer is \\boxed{42}."),
            ],
        )
        .on("[fence wrong]", None, vec![text("Guess: \\boxed{3}")])
        .on(
            "[cut]",
            None,
            vec![ScriptReply::Message {
                content: Some("Long".into()),
                tool_calls: vec![],
                finish: Some("length".into()),
            }
            .into()],
        )
        // Distill: three samples (seeds 10, 11, 12) that agree up to form, and three that do not.
        .on("[agree]", Some(10), vec![text("\\boxed{\\frac{1}{2}}")])
        .on(
            "[agree]",
            Some(11),
            vec![text("```python\nprint(1/2)\n```\n"), text("\\boxed{0.5}")],
        )
        .on("[agree]", Some(12), vec![text("It is \\boxed{1/2}.")])
        .on("[disagree]", Some(10), vec![text("\\boxed{4}")])
        .on("[disagree]", Some(11), vec![text("\\boxed{5}")])
        .on("[disagree]", Some(12), vec![text("\\boxed{4}")]);
    let s = start(script);
    let dir = tempfile::tempdir().unwrap();
    let problems = dir.path().join("problems.jsonl");
    write_problems(
        &problems,
        &[
            ("fence", "[fence] 6 times 7?", Some("42")),
            ("wrong", "[fence wrong] 2?", Some("2")),
            ("cut", "[cut] 1?", Some("1")),
        ],
    );
    let out = dir.path().join("seed");
    teach(&s, "seed", &problems, "fences", &out, &[]);
    let k = kept(&out);
    assert_eq!(k.len(), 1);
    assert_eq!(
        k["fence#0"],
        [
            b("text", "We multiply."),
            b("code", "print(6*7)"),
            b("execution", "42"),
            b("text", "The output is 42, so the answer is \\boxed{42}."),
            b("text", "42")
        ]
    );
    let a = attempts(&out);
    assert_eq!(a["wrong"].0, "wrong");
    assert_eq!(a["cut"].0, "unconverted");
    assert!(a["cut"].1.contains("truncated"), "{:?}", a["cut"]);
    // The output went back as a user message after the closed fence.
    let second = second_request(&s, "[fence]");
    assert_eq!(
        second["messages"][2]["content"],
        "We multiply.\n```python\nprint(6*7)\n```"
    );
    assert_eq!(
        second["messages"][3],
        json!({"role": "user", "content": "```output\n42\n```"})
    );
    assert_eq!(second["stop"], json!(mathcoder_lce::chat::FENCE_STOPS));

    let new = dir.path().join("new.jsonl");
    std::fs::write(
        &new,
        "{\"id\": \"agree\", \"question\": \"[agree] Half of one?\", \"answer\": null, \"dataset\": \"new\"}\n{\"id\": \"disagree\", \"question\": \"[disagree] Four?\", \"answer\": null, \"dataset\": \"new\"}\n",
    )
    .unwrap();
    let out = dir.path().join("distill");
    teach(
        &s,
        "distill",
        &new,
        "fences",
        &out,
        &["--samples", "3", "--seed", "10", "--keep-all"],
    );
    let k = kept(&out);
    assert_eq!(
        k.keys().cloned().collect::<Vec<_>>(),
        ["agree#0", "agree#1", "agree#2"]
    );
    assert_eq!(
        k["agree#1"],
        [
            b("code", "print(1/2)"),
            b("execution", "0.5"),
            b("text", "\\boxed{0.5}"),
            b("text", "0.5")
        ]
    );
    assert_eq!(attempts(&out)["disagree"].0, "wrong");
}

const EASY: [&str; 3] = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "A bus carries 12 people on each trip. How many people does it carry in 5 trips?",
    "Mia reads 10 pages a day. How many pages does she read in a week?",
];
const HARD: [&str; 2] = [
    "Find the number of positive integers n less than 1000 such that n^2 + 1 is divisible by 5.",
    "Let f(x) = x^3 - 3x + 1. Find the sum of the squares of the roots of f.",
];

fn pair_needle(e: usize, h: usize) -> String {
    format!("Example 1: {}\n\nExample 2: {}", EASY[e], HARD[h])
}

fn judge_needle(first: &str, second: &str) -> String {
    format!("Problem 1: \"{first}\"\n\nProblem 2: \"{second}\"")
}

#[test]
fn interpolate_then_judge_and_distill() {
    let n = [
        "A shop sells pens in packs of 6. Sam buys 7 packs and gives away a third of the pens. How many are left?",
        "How many positive integers below 50 leave remainder 1 when divided by both 3 and 4?",
        "The sum of two numbers is 20 and their product is 96. What is the larger number?",
    ];
    let mut script = ChatScript::default()
        .on(
            &pair_needle(0, 0),
            None,
            vec![text(&format!("New problem: {}", n[0]))],
        )
        .on(
            &pair_needle(0, 1),
            None,
            vec![faulty(
                vec![ChatFault::Status(502)],
                text(&format!("**New Problem:**\n\"{}\"", n[1])),
            )],
        )
        .on(
            &pair_needle(1, 0),
            None,
            vec![text(&format!(
                "Example 3: {}\n\nSolution: 6 + 14 = 20, 6 * 14 = 84... so 12 and 8.",
                n[2]
            ))],
        )
        .on(&pair_needle(1, 1), None, vec![text("   ")])
        .on(
            &pair_needle(2, 0),
            None,
            vec![text(&format!("New problem: {}", EASY[2]))],
        )
        .on(
            &pair_needle(2, 1),
            None,
            vec![text(
                "Problem 1: How many apples?\n\nProblem 2: How many pears?",
            )],
        );
    // The judge: n[0] harder than its GSM8K parent and easier than its MATH parent, in both
    // orders; n[1] always "Problem 1" against its GSM8K parent (position bias) and a tie with
    // its MATH parent; n[2] harder than its GSM8K parent, and one unreadable reply.
    let judge = [
        (n[0], EASY[0], "Problem 1", "Problem 2"),
        (n[0], HARD[0], "Problem 2", "Problem 1"),
        (n[1], EASY[0], "Problem 1", "Problem 1"),
        (n[1], HARD[1], "Tie", "Tie"),
        (
            n[2],
            EASY[1],
            "\"Problem 1\" is more difficult.",
            "Problem 2",
        ),
        (n[2], HARD[0], "I cannot tell.", "Problem 1"),
    ];
    for (new, parent, new_first, parent_first) in judge {
        script = script
            .on(&judge_needle(new, parent), None, vec![text(new_first)])
            .on(&judge_needle(parent, new), None, vec![text(parent_first)]);
    }
    let s = start(script);
    let dir = tempfile::tempdir().unwrap();
    let (easy, hard) = (dir.path().join("easy.jsonl"), dir.path().join("hard.jsonl"));
    let e: Vec<_> = EASY
        .iter()
        .enumerate()
        .map(|(i, q)| (format!("e{i}"), *q))
        .collect();
    let h: Vec<_> = HARD
        .iter()
        .enumerate()
        .map(|(i, q)| (format!("h{i}"), *q))
        .collect();
    write_problems(
        &easy,
        &e.iter()
            .map(|(i, q)| (i.as_str(), *q, Some("1")))
            .collect::<Vec<_>>(),
    );
    write_problems(
        &hard,
        &h.iter()
            .map(|(i, q)| (i.as_str(), *q, Some("1")))
            .collect::<Vec<_>>(),
    );
    let out = dir.path().join("interp");
    let run = |count: &str| {
        data(
            &s,
            &[
                "interpolate",
                "--count",
                count,
                "--seed",
                "5",
                "--easy",
                easy.to_str().unwrap(),
                "--hard",
                hard.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        )
    };
    // Two pairs, then all six: the first two are not asked again.
    run("2");
    let o = run("6");
    let interpolated = String::from_utf8_lossy(&o.stdout).to_string();
    let tried = rows(&out.join("attempts.jsonl"));
    assert_eq!(tried.len(), 6);
    assert_eq!(
        tried
            .iter()
            .map(|a| a["pair"].as_u64().unwrap())
            .collect::<BTreeSet<_>>(),
        (0..6).collect()
    );
    let count = |what: &str| {
        tried
            .iter()
            .filter(|a| a["rejection"] == what || a["outcome"] == what)
            .count()
    };
    assert_eq!(
        [
            count("accepted"),
            count("empty"),
            count("echoed_parent"),
            count("multiple_problems")
        ],
        [3, 1, 1, 1],
        "{interpolated}"
    );
    let problems = rows(&out.join("problems.jsonl"));
    let by_question: BTreeMap<&str, &Value> = problems
        .iter()
        .map(|p| (p["question"].as_str().unwrap(), p))
        .collect();
    assert_eq!(
        by_question.keys().copied().collect::<BTreeSet<_>>(),
        n.into_iter().collect()
    );
    assert_eq!(by_question[n[0]]["parents"], json!(["e0", "h0"]));
    assert_eq!(by_question[n[2]]["parents"], json!(["e1", "h0"]));
    // Each pair's prompt was asked once (the 502 retried), and is the paper's, verbatim.
    let reqs = s.server.requests();
    let asked: Vec<&str> = reqs
        .iter()
        .filter_map(|r| r["messages"][0]["content"].as_str())
        .collect();
    assert_eq!(asked.len(), 7);
    assert!(asked[0].starts_with("Please create a new problem, following the given example"));

    let judged = dir.path().join("judge");
    let judge = || {
        data(
            &s,
            &[
                "judge",
                "--problems",
                out.join("problems.jsonl").to_str().unwrap(),
                "--easy",
                easy.to_str().unwrap(),
                "--hard",
                hard.to_str().unwrap(),
                "--out",
                judged.to_str().unwrap(),
            ],
        )
    };
    let o = judge();
    let report: Value =
        serde_json::from_slice(&std::fs::read(judged.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["judged"], 3);
    assert_eq!(report["vs_easy"], json!({"harder": 2, "inconsistent": 1}));
    assert_eq!(
        report["vs_hard"],
        json!({"easier": 1, "tie": 1, "unparsed": 1})
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    eprintln!("{interpolated}\n{stdout}");
    assert!(
        stdout.contains("harder than the GSM8K parent: 66.7%")
            && stdout.contains("easier than the MATH parent: 33.3%"),
        "{stdout}"
    );
    // Judging again asks nothing.
    let before = s.server.requests().len();
    judge();
    assert_eq!(s.server.requests().len(), before);
}

/// The interpolated problems file is what `distill --problems` reads (checked without a
/// server: the problems load, and a missing server is reported at once).
#[test]
fn distill_reads_interpolated_problems() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("problems.jsonl");
    std::fs::write(
        &f,
        "{\"id\":\"interp-5-0\",\"dataset\":\"interpolated\",\"split\":\"train\",\"question\":\"Q?\",\"answer\":null,\"subject\":null,\"level\":null,\"solution\":null,\"parents\":[\"e0\",\"h0\"],\"pair\":0,\"generator\":\"g\"}\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_mathcoder"))
        .args([
            "data",
            "distill",
            "--problems",
            f.to_str().unwrap(),
            "--teacher",
            "chat",
        ])
        .args(["--endpoint", &format!("http://127.0.0.1:{port}"), "--out"])
        .arg(dir.path().join("o"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach"), "{err}");
}
