//! The status of an action item in the journals (new, assigned, done), and its label.

/// The status of an action item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    New,
    Assigned,
    Done,
}

impl Status {
    pub fn parse(s: &str) -> Option<Status> {
        match s.trim().to_lowercase().as_str() {
            "new" | "nouveau" | "🆕" => Some(Status::New),
            "assigned" | "attribué" | "attribue" | "👀" | "✋" => Some(Status::Assigned),
            "done" | "traité" | "traite" | "fait" | "✅" | "✔" | "✔️" => Some(Status::Done),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Assigned => "assigned",
            Status::Done => "done",
        }
    }
}

/// An item's status and who it is assigned to.
#[derive(Clone, Debug)]
pub(crate) struct ItemStatus {
    pub status: Status,
    pub assignee: Option<String>,
}

impl ItemStatus {
    pub fn new_item() -> ItemStatus {
        ItemStatus { status: Status::New, assignee: None }
    }

    pub fn label(&self) -> String {
        match (self.status, &self.assignee) {
            (Status::New, _) => "nouveau".to_owned(),
            (Status::Assigned, Some(who)) => format!("attribué à {who}"),
            (Status::Assigned, None) => "attribué".to_owned(),
            (Status::Done, _) => "traité".to_owned(),
        }
    }
}
