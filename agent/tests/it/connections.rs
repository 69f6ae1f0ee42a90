//! Connection bounds on real agents: idle connections past `--max-client-connections` are
//! closed without costing the cluster its leader, and one connection holds at most
//! `--max-streams-per-connection` RPCs at once.

use crate::harness::*;
use crate::limits::open_watch;
use mozen_proto as pb;
use mozen_proto::mozen_client::MozenClient;
use serde_json::json;
use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;
use tonic::transport::Channel;

async fn connection(addr: &str) -> MozenClient<Channel> {
    MozenClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn echo(n: u64) -> pb::CallRequest {
    pb::CallRequest {
        function: "echo".into(),
        args_json: json!(n).to_string(),
        ..Default::default()
    }
}

/// Whether the agent has closed `s`: reading what it sent (an admitted connection gets the
/// server's HTTP/2 settings) finds end of file.
fn closed_by_agent(mut s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    loop {
        match s.read(&mut [0; 1024]) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_past_the_cap_are_closed_and_the_leader_stays() {
    const CAP: usize = 24;
    const FLOOD: usize = 120;
    let c = Cluster::start(3, &["--max-client-connections", &CAP.to_string()]);
    c.ready(3).await;
    let leader = c.leader().await;
    let term = c.status().await.unwrap().term;
    let mut conn = connection(&c.by_id(leader).addr).await;
    conn.call(echo(0)).await.unwrap();

    // Connections that never speak HTTP/2, to every agent.
    let mut flood: Vec<TcpStream> = Vec::new();
    for a in &c.agents {
        for _ in 0..FLOOD {
            flood.push(TcpStream::connect(&a.addr).unwrap());
        }
    }
    for n in 1..=20 {
        let r = conn.call(echo(n)).await.unwrap().into_inner();
        assert_eq!(r.result_json.as_deref(), Some(n.to_string().as_str()));
    }
    let per_agent = flood.chunks(FLOOD).collect::<Vec<_>>();
    for (a, conns) in c.agents.iter().zip(per_agent) {
        eventually(
            Duration::from_secs(10),
            "the connections past the cap closed",
            || {
                let closed = conns.iter().filter(|s| closed_by_agent(s)).count();
                async move { closed >= FLOOD - CAP }
            },
        )
        .await;
        assert!(
            a.stderr().contains("--max-client-connections allows"),
            "agent {} logs the refusals",
            a.id
        );
    }
    // Through the connection made before the flood: new ones wait for free slots.
    let after = conn
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.leader_id, Some(leader));
    assert_eq!(after.term, term, "no election while flooded");

    // The flood stays open, but its connections never sent an HTTP/2 preface: they are
    // closed after the handshake timeout (10 s), and a new connection is served.
    eventually(Duration::from_secs(30), "a new connection served", || {
        let addr = c.by_id(leader).addr.clone();
        async move {
            match MozenClient::connect(format!("http://{addr}")).await {
                Ok(mut fresh) => fresh.call(echo(99)).await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "every silent connection closed",
        || {
            let all = flood.iter().all(closed_by_agent);
            async move { all }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_connection_opens_at_most_max_streams_per_connection() {
    let c = Cluster::start(1, &["--voters", "1", "--max-streams-per-connection", "2"]);
    c.ready(1).await;
    let mut conn = connection(&c.agents[0].addr).await;
    let w1 = open_watch(&mut conn).await;
    let w2 = open_watch(&mut conn).await;
    // A third stream on the same connection waits in the client for a free one: the agent
    // advertised 2 in its HTTP/2 settings. Another connection is not held up.
    let mut third = tokio::spawn({
        let mut conn = conn.clone();
        async move { conn.status(pb::StatusRequest {}).await }
    });
    let mut other = connection(&c.agents[0].addr).await;
    other.call(echo(1)).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "a third stream opened beside two open ones"
    );
    drop(w1);
    let status = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the third stream starts once one ends")
        .unwrap();
    status.unwrap();
    drop(w2);
}
