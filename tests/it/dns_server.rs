//! A real DNS server for the tests, over UDP on 127.0.0.1:0: it answers TXT queries from a table
//! (the DKIM keys `<selector>._domainkey.<domain>`), NXDOMAIN for any other name, or, started
//! `silent`, never answers at all (a resolver that has gone away). It records every question.
//!
//! It runs on a thread of its own, not on the test's runtime, so it keeps answering while a
//! test waits on the `digestif` binary with a blocking call.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TXT: u16 = 16;
const NXDOMAIN: u8 = 3;

/// The server; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Serves these TXT records, given as (name, value) like `Signer::dns_records` prints them.
    pub fn start(records: &[(String, String)]) -> Self {
        let table = records
            .iter()
            .map(|(name, value)| (normal(name), value.clone()))
            .collect();
        Self::spawn(Some(table))
    }

    /// Reads every query and answers none.
    pub fn silent() -> Self {
        Self::spawn(None)
    }

    fn spawn(table: Option<HashMap<String, String>>) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the test DNS server");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("local address");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (asked, stop) = (asked.clone(), stop.clone());
            std::thread::spawn(move || serve(&socket, table.as_ref(), &asked, &stop))
        };
        Self {
            addr,
            asked,
            stop,
            thread: Some(thread),
        }
    }

    /// `ip:port`, for `bounces.dns_server`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The names asked for so far (lower case, no final dot), in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn serve(
    socket: &UdpSocket,
    table: Option<&HashMap<String, String>>,
    asked: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue; // the read timeout: look at `stop` again
        };
        let Some((name, qtype, question_end)) = question(&buf[..n]) else {
            continue;
        };
        asked.lock().unwrap().push(name.clone());
        let Some(table) = table else { continue };
        let found = table.get(&name);
        let mut reply = Vec::with_capacity(512);
        reply.extend_from_slice(&buf[..2]); // the id
        // QR, the query's opcode and RD, AA; then RA and the response code.
        reply.push(0x80 | (buf[2] & 0x79) | 0x04);
        reply.push(0x80 | if found.is_some() { 0 } else { NXDOMAIN });
        let answers = u16::from(found.is_some() && qtype == TXT);
        for count in [1, answers, 0, 0] {
            reply.extend_from_slice(&u16::to_be_bytes(count));
        }
        reply.extend_from_slice(&buf[12..question_end]);
        if let (Some(value), 1) = (found, answers) {
            let mut rdata = Vec::new();
            for chunk in value.as_bytes().chunks(255) {
                rdata.push(chunk.len() as u8);
                rdata.extend_from_slice(chunk);
            }
            reply.extend_from_slice(&[0xc0, 0x0c]); // the name: a pointer to the question's
            reply.extend_from_slice(&TXT.to_be_bytes());
            reply.extend_from_slice(&1u16.to_be_bytes()); // class IN
            reply.extend_from_slice(&60u32.to_be_bytes()); // TTL
            reply.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            reply.extend_from_slice(&rdata);
        }
        let _ = socket.send_to(&reply, peer);
    }
}

/// The first question of a query: (name, type, where the question ends).
fn question(msg: &[u8]) -> Option<(String, u16, usize)> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) == 0 {
        return None;
    }
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression has no place in a question
        }
        labels.push(String::from_utf8_lossy(msg.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
    Some((labels.join("."), qtype, at + 4))
}
