//! A small SMTP server for tests: speaks enough of RFC 5321 (EHLO, AUTH PLAIN/LOGIN, MAIL,
//! RCPT, DATA, RSET, NOOP, QUIT) for lettre, keeps every message it accepts, and can be told to
//! refuse at a given step with a given reply.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, Clone, Default)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: String,
}

/// Replies the sink gives instead of its usual `250`s; `None` means accept.
#[derive(Debug, Clone, Default)]
pub struct SinkBehaviour {
    /// `(user, password)` that AUTH accepts; with `None`, AUTH is not offered.
    pub credentials: Option<(String, String)>,
    pub rcpt_reply: Option<String>,
    pub data_reply: Option<String>,
}

pub struct SmtpSink {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<SinkBehaviour>>,
}

impl SmtpSink {
    pub fn start(behaviour: SinkBehaviour) -> SmtpSink {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (sink, rules) = (Arc::clone(&received), Arc::clone(&behaviour));
        std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else { return };
                let _ = port_tx.send(listener.local_addr().map(|a| a.port()).unwrap_or_default());
                while let Ok((stream, _)) = listener.accept().await {
                    let (sink, rules) = (Arc::clone(&sink), Arc::clone(&rules));
                    tokio::spawn(async move {
                        let _ = session(stream, sink, rules).await;
                    });
                }
            });
        });
        let port = port_rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        assert!(port != 0, "SMTP sink did not start");
        SmtpSink { port, received, behaviour }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn set(&self, behaviour: SinkBehaviour) {
        if let Ok(mut rules) = self.behaviour.lock() {
            *rules = behaviour;
        }
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for byte in text.bytes().filter(|b| *b != b'=') {
        let Some(value) = ALPHABET.iter().position(|a| *a == byte) else { continue };
        buffer = (buffer << 6) | value as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

async fn session(
    stream: tokio::net::TcpStream,
    sink: Arc<Mutex<Vec<Received>>>,
    rules: Arc<Mutex<SinkBehaviour>>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let rules = || rules.lock().map(|r| r.clone()).unwrap_or_default();
    write.write_all(b"220 sink.test ESMTP ready\r\n").await?;
    let mut current = Received::default();
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            match rules().credentials {
                Some(_) => "250-sink.test\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME".into(),
                None => "250-sink.test\r\n250 8BITMIME".into(),
            }
        } else if upper.starts_with("AUTH PLAIN") {
            let given = decode_base64(line.get(11..).unwrap_or_default().trim());
            let parts: Vec<&[u8]> = given.split(|b| *b == 0).collect();
            let ok = rules().credentials.is_some_and(|(user, password)| {
                parts.len() == 3 && parts[1] == user.as_bytes() && parts[2] == password.as_bytes()
            });
            if ok {
                "235 2.7.0 Authentication successful".into()
            } else {
                "535 5.7.8 Authentication failed".into()
            }
        } else if upper.starts_with("MAIL FROM:") {
            current = Received { mail_from: line[10..].trim().to_owned(), ..Received::default() };
            "250 2.1.0 Ok".into()
        } else if upper.starts_with("RCPT TO:") {
            match rules().rcpt_reply {
                Some(reply) => reply,
                None => {
                    current.rcpt_to.push(line[8..].trim().to_owned());
                    "250 2.1.5 Ok".into()
                }
            }
        } else if upper == "DATA" {
            write.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
            let mut data = String::new();
            while let Some(line) = lines.next_line().await? {
                if line == "." {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
                data.push_str("\r\n");
            }
            match rules().data_reply {
                Some(reply) => reply,
                None => {
                    current.data = data;
                    if let Ok(mut sink) = sink.lock() {
                        sink.push(std::mem::take(&mut current));
                    }
                    "250 2.0.0 Ok: queued as SINK1".into()
                }
            }
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            "250 2.0.0 Ok".into()
        } else {
            "502 5.5.2 Command not recognized".into()
        };
        write.write_all(reply.as_bytes()).await?;
        write.write_all(b"\r\n").await?;
    }
    Ok(())
}
