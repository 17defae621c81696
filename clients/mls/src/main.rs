//! `diplomatie-client`: the command line of the DR rooms' MLS client. One store file is one
//! device; every command reads it, acts, and writes it back.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use diplomatie_client::{Client, Message};

#[derive(Parser)]
#[command(name = "diplomatie-client", about = "Speaks MLS in the portal's DR rooms (one store file per device)")]
struct Cli {
    /// The device's store (created by `login`).
    #[arg(long, env = "DIPLOMATIE_CLIENT_STORE", default_value = "diplomatie-client.json")]
    store: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Logs in as a new device: makes its key, publishes its key packages, writes the store.
    Login {
        #[arg(long)]
        homeserver: String,
        #[arg(long)]
        user: String,
        #[arg(long, env = "DIPLOMATIE_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Creates a DR room in MLS mode and its group; prints the room id.
    CreateRoom {
        #[arg(long)]
        name: Option<String>,
    },
    /// Invites a user into a room.
    Invite { room: String, user: String },
    /// Adds a user's devices that may join (cleared DR, approved) to the room's group.
    Add { room: String, user: String },
    /// Joins a room this user was invited to (the group follows with a member's `add`).
    Join { room: String },
    /// Encrypts and sends a message; prints its event id.
    Send { room: String, text: String },
    /// Syncs once and prints the messages read.
    Sync {
        /// How long the server may wait for news, in milliseconds.
        #[arg(long, default_value_t = 0)]
        timeout: u64,
    },
    /// Renews this device's key material in a room's group.
    Rotate { room: String },
    /// Brings this device back into a room's group by itself (an external commit), once it
    /// is approved again; prints the new epoch.
    Rejoin { room: String },
    /// Leaves a room and forgets its group.
    Leave { room: String },
    /// Prints the messages read and sent in a room (from the store, offline).
    History { room: String },
    /// Publishes more key packages.
    KeyPackages {
        #[arg(long, default_value_t = diplomatie_client::KEY_PACKAGES)]
        count: usize,
    },
    /// Prints the devices of a room's group and its epoch.
    Members { room: String },
    /// Names a room (MLS, classified DR) as the DR room of a group this user manages.
    SetDrRoom { group: String, room: String },
    /// Signs and sends a DR correspondence, encrypted into each group's DR room; prints its
    /// reference.
    Correspond {
        /// telegram, diplomatic_note or formal_letter.
        #[arg(long)]
        kind: String,
        /// The sending group.
        #[arg(long)]
        from: String,
        #[arg(long)]
        subject: String,
        /// Addressee groups for action.
        #[arg(long)]
        action: Vec<String>,
        /// Addressee groups for information.
        #[arg(long)]
        information: Vec<String>,
        body: String,
    },
}

fn print(messages: &[Message]) {
    for m in messages {
        println!("{}\t{}\t{}\t{}", m.room_id, m.event_id, m.sender, m.text);
    }
}

async fn run(cli: Cli) -> diplomatie_client::Result<()> {
    if let Command::Login { homeserver, user, password } = &cli.command {
        let client = Client::login(&cli.store, homeserver, user, password).await?;
        println!("{} {}", client.user_id(), client.device_id());
        return Ok(());
    }
    let mut client = Client::open(&cli.store)?;
    match cli.command {
        Command::Login { .. } => unreachable!("handled above"),
        Command::CreateRoom { name } => println!("{}", client.create_room(name.as_deref()).await?),
        Command::Invite { room, user } => client.invite(&room, &user).await?,
        Command::Add { room, user } => {
            for device in client.add(&room, &user).await? {
                println!("{device}");
            }
        }
        Command::Join { room } => client.join(&room).await?,
        Command::Send { room, text } => println!("{}", client.send(&room, &text).await?),
        Command::Sync { timeout } => print(&client.sync(timeout).await?),
        Command::Rotate { room } => println!("{}", client.rotate(&room).await?),
        Command::Rejoin { room } => println!("{}", client.rejoin(&room).await?),
        Command::SetDrRoom { group, room } => client.set_group_dr_room(&group, &room).await?,
        Command::Correspond { kind, from, subject, action, information, body } => {
            let c = diplomatie_client::correspondence::Composition {
                kind,
                from,
                subject,
                body,
                action,
                information,
                tags: vec![],
            };
            println!("{}", client.send_correspondence(&c).await?.0.reference);
        }
        Command::Leave { room } => client.leave(&room).await?,
        Command::History { room } => print(&client.history(&room)),
        Command::KeyPackages { count } => println!("{}", client.publish_key_packages(count).await?),
        Command::Members { room } => {
            println!("epoch {}", client.epoch(&room).unwrap_or_default());
            for m in client.members(&room)? {
                println!("{}\t{}", m.user_id, m.device_id);
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("diplomatie-client: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
