//! A DNS server on loopback (UDP) for server discovery tests: it answers the SRV records it is
//! given and `NXDOMAIN` to everything else.

use std::{
    collections::HashMap,
    net::SocketAddr,
    str::FromStr,
    sync::{Arc, Mutex},
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{rdata::SRV, Name, RData, Record, RecordType},
};

pub struct Dns {
    pub addr: SocketAddr,
    records: Arc<Mutex<HashMap<String, (String, u16)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Dns {
    pub async fn start() -> Dns {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind a UDP port");
        let addr = socket.local_addr().unwrap();
        let records: Arc<Mutex<HashMap<String, (String, u16)>>> = Arc::default();
        let table = records.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                let answer = answer(&query, &table.lock().unwrap());
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        Dns { addr, records, task }
    }

    /// `name` (such as `_matrix-fed._tcp.example.test`) has an SRV record to `target:port`.
    pub fn srv(&self, name: &str, target: &str, port: u16) {
        self.records.lock().unwrap().insert(name.trim_end_matches('.').to_lowercase(), (target.to_owned(), port));
    }

    /// The setting that makes a server ask this one.
    pub fn setting(&self) -> String {
        format!("[\"{}\"]", self.addr)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(query: &Message, table: &HashMap<String, (String, u16)>) -> Message {
    let mut response = Message::new();
    response.set_id(query.id());
    response.set_message_type(MessageType::Response);
    response.set_op_code(query.op_code());
    response.set_recursion_desired(query.recursion_desired());
    response.set_recursion_available(true);
    response.set_authoritative(true);
    response.add_queries(query.queries().to_vec());
    let mut found = false;
    for q in query.queries() {
        let key = q.name().to_ascii().trim_end_matches('.').to_lowercase();
        if let (RecordType::SRV, Some((target, port))) = (q.query_type(), table.get(&key)) {
            let target = Name::from_str(&format!("{}.", target.trim_end_matches('.'))).expect("a target name");
            response.add_answer(Record::from_rdata(q.name().clone(), 60, RData::SRV(SRV::new(10, 5, *port, target))));
            found = true;
        }
    }
    if !found {
        response.set_response_code(ResponseCode::NXDomain);
    }
    response
}
