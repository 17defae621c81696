//! A device's side of the portal's MLS groups: its signing key (the device's Matrix ed25519
//! key), its key packages, its groups and their secrets. Clients (`clients/mls`) wrap it
//! with the client-server API and a store file; the delivery service's tests drive it
//! directly.
//!
//! Every change of a group is staged here, sent to the delivery service, and merged only once
//! the service accepted it ([`Device::merge_pending`]); when the service refuses it, the
//! device drops it ([`Device::discard_pending`]), catches up with the commits it missed and
//! tries again.

use openmls::{
    group::{
        GroupId, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig, StagedWelcome, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
    },
    prelude::{
        tls_codec::{Deserialize as _, Serialize as _},
        Capabilities, CredentialWithKey, Extension, ExtensionType, Extensions, ExternalSender, KeyPackage,
        KeyPackageIn, LeafNodeIndex, LeafNodeParameters, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
        ProcessedMessageContent, ProtocolVersion, RatchetTreeIn, SignaturePublicKey,
    },
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::{types::SignatureScheme, OpenMlsProvider};

use crate::{store::Provider, Error, Identity, Result, CIPHERSUITE};

/// How many past epochs a device keeps the secrets of, to read messages sent just before a
/// commit it already merged.
const PAST_EPOCHS: usize = 16;

/// What a change of a group sends: the commit (to the delivery service), the Welcome for the
/// devices it adds, and the new epoch's group info (for later external joins).
#[derive(Debug)]
pub struct Outgoing {
    pub commit: Vec<u8>,
    pub welcome: Option<Vec<u8>>,
    pub group_info: Option<Vec<u8>>,
}

/// What a message received in a group was.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// An application message, decrypted, and who sent it.
    Application { sender: Identity, plaintext: Vec<u8> },
    /// A commit, merged: the group is now at `epoch`.
    Commit { epoch: u64, removed_self: bool },
    /// A proposal (the server's removal of a device), kept for the next commit.
    Proposal,
    /// This device's own message, or a commit of an epoch already passed: nothing to do.
    Ignored,
}

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::Invalid(format!("{what}: {e}"))
}

fn out(message: &MlsMessageOut) -> Result<Vec<u8>> {
    message.tls_serialize_detached().map_err(err("cannot encode"))
}

/// A device's MLS state.
pub struct Device {
    pub identity: Identity,
    provider: Provider,
    signer: SignatureKeyPair,
}

impl Device {
    /// A device whose MLS signing key is its Matrix ed25519 key (`seed`: the key's 32 secret
    /// bytes), with the state `saved` by [`Device::save`] (or none, for a new device).
    pub fn new(identity: Identity, seed: &[u8; 32], saved: Option<&[u8]>) -> Result<Device> {
        let provider = match saved {
            Some(bytes) => Provider::load(bytes)?,
            None => Provider::default(),
        };
        let public = ed25519_dalek::SigningKey::from_bytes(seed).verifying_key().to_bytes();
        let signer = SignatureKeyPair::from_raw(SignatureScheme::ED25519, seed.to_vec(), public.to_vec());
        Ok(Device { identity, provider, signer })
    }

    pub fn save(&self) -> Vec<u8> {
        self.provider.save()
    }

    fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: self.identity.credential(),
            signature_key: SignaturePublicKey::from(self.signer.public().to_vec()),
        }
    }

    fn join_config() -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(PAST_EPOCHS)
            // As at creation: Welcomes carry their tree, commits come with their group info.
            .use_ratchet_tree_extension(true)
            .build()
    }

    fn group(&self, group_id: &[u8]) -> Result<MlsGroup> {
        MlsGroup::load(self.provider.storage(), &GroupId::from_slice(group_id))
            .map_err(err("unreadable group"))?
            .ok_or_else(|| Error::Invalid("this device is not in that group".into()))
    }

    /// A new key package (TLS-encoded), its private keys kept in this device's state.
    pub fn key_package(&self, last_resort: bool) -> Result<Vec<u8>> {
        // A last-resort key package carries an extension its leaf must declare.
        let capabilities = Capabilities::new(None, None, Some(&[ExtensionType::LastResort]), None, None);
        let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities);
        if last_resort {
            builder = builder.mark_as_last_resort();
        }
        let bundle =
            builder.build(CIPHERSUITE, &self.provider, &self.signer, self.credential()).map_err(err("key package"))?;
        bundle.key_package().tls_serialize_detached().map_err(err("cannot encode"))
    }

    /// Creates a group with this device alone in it, at epoch 0, naming the server (its
    /// signature key and credential) as the external sender that may propose removals. Returns
    /// the group info (an `MlsMessage`) and the ratchet tree the server starts from.
    pub fn create_group(&self, group_id: &[u8], server: ExternalSender) -> Result<(Vec<u8>, Vec<u8>)> {
        let extensions = Extensions::single(Extension::ExternalSenders(vec![server])).map_err(err("extensions"))?;
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(PAST_EPOCHS)
            // Welcomes carry the ratchet tree of their epoch: a device that opens one later,
            // after further commits, needs that tree, not the group's current one.
            .use_ratchet_tree_extension(true)
            .with_group_context_extensions(extensions)
            .build();
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &config,
            GroupId::from_slice(group_id),
            self.credential(),
        )
        .map_err(err("cannot create the group"))?;
        let info = group.export_group_info(self.provider.crypto(), &self.signer, false).map_err(err("group info"))?;
        let tree = group.export_ratchet_tree().tls_serialize_detached().map_err(err("cannot encode"))?;
        Ok((out(&info)?, tree))
    }

    fn outgoing(
        (commit, welcome, info): (
            MlsMessageOut,
            Option<MlsMessageOut>,
            Option<openmls::messages::group_info::GroupInfo>,
        ),
    ) -> Result<Outgoing> {
        Self::bundled((commit, welcome, info.map(MlsMessageOut::from)))
    }

    fn bundled(
        (commit, welcome, info): (MlsMessageOut, Option<MlsMessageOut>, Option<MlsMessageOut>),
    ) -> Result<Outgoing> {
        Ok(Outgoing {
            commit: out(&commit)?,
            welcome: welcome.as_ref().map(out).transpose()?,
            group_info: info.as_ref().map(out).transpose()?,
        })
    }

    /// Stages a commit adding the devices whose key packages (TLS-encoded) are given.
    pub fn add(&self, group_id: &[u8], key_packages: &[Vec<u8>]) -> Result<Outgoing> {
        let mut group = self.group(group_id)?;
        let mut packages = Vec::new();
        for bytes in key_packages {
            let kp = KeyPackageIn::tls_deserialize_exact(bytes.as_slice()).map_err(err("not a key package"))?;
            packages.push(kp.validate(self.provider.crypto(), ProtocolVersion::Mls10).map_err(err("key package"))?);
        }
        let (commit, welcome, info) =
            group.add_members(&self.provider, &self.signer, &packages).map_err(err("cannot add"))?;
        Self::outgoing((commit, Some(welcome), info))
    }

    /// Stages a commit removing the given devices.
    pub fn remove(&self, group_id: &[u8], devices: &[Identity]) -> Result<Outgoing> {
        let mut group = self.group(group_id)?;
        let leaves: Vec<LeafNodeIndex> = group
            .members()
            .filter(|m| Identity::of_credential(&m.credential).is_ok_and(|i| devices.contains(&i)))
            .map(|m| m.index)
            .collect();
        if leaves.is_empty() {
            return Err(Error::Invalid("none of these devices is in the group".into()));
        }
        let staged = group.remove_members(&self.provider, &self.signer, &leaves).map_err(err("cannot remove"))?;
        Self::outgoing(staged)
    }

    /// Stages a commit that renews this device's leaf (new encryption keys), and includes the
    /// proposals received (the server's removals).
    pub fn update(&self, group_id: &[u8]) -> Result<Outgoing> {
        let mut group = self.group(group_id)?;
        let bundle = group
            .self_update(&self.provider, &self.signer, LeafNodeParameters::default())
            .map_err(err("cannot update"))?;
        Self::bundled(bundle.into_messages())
    }

    /// Stages a commit of the proposals received (the server's removals).
    pub fn commit_pending(&self, group_id: &[u8]) -> Result<Outgoing> {
        let mut group = self.group(group_id)?;
        let staged = group.commit_to_pending_proposals(&self.provider, &self.signer).map_err(err("cannot commit"))?;
        Self::outgoing(staged)
    }

    /// Merges the commit this device staged, once the delivery service accepted it.
    pub fn merge_pending(&self, group_id: &[u8]) -> Result<u64> {
        let mut group = self.group(group_id)?;
        group.merge_pending_commit(&self.provider).map_err(err("cannot merge"))?;
        Ok(group.epoch().as_u64())
    }

    /// Drops the commit this device staged, which the delivery service refused.
    pub fn discard_pending(&self, group_id: &[u8]) -> Result<()> {
        let mut group = self.group(group_id)?;
        group.clear_pending_commit(self.provider.storage()).map_err(err("cannot discard"))
    }

    /// Joins a group by a Welcome (an `MlsMessage`), with the group's ratchet tree at the
    /// Welcome's epoch unless the Welcome carries it (the portal's groups' Welcomes do);
    /// returns the group's id.
    pub fn join(&self, welcome: &[u8], ratchet_tree: Option<&[u8]>) -> Result<Vec<u8>> {
        let welcome = match MlsMessageIn::tls_deserialize_exact(welcome).map_err(err("not an MLS message"))?.extract() {
            MlsMessageBodyIn::Welcome(w) => w,
            _ => return Err(Error::Malformed("not a Welcome".into())),
        };
        let tree = ratchet_tree
            .map(|t| RatchetTreeIn::tls_deserialize_exact(t).map_err(err("not a ratchet tree")))
            .transpose()?;
        let group = StagedWelcome::new_from_welcome(&self.provider, &Self::join_config(), welcome, tree)
            .map_err(err("the Welcome does not open"))?
            .into_group(&self.provider)
            .map_err(err("cannot join"))?;
        Ok(group.group_id().as_slice().to_vec())
    }

    /// Joins a group by itself (an external commit, RFC 9420 §12.4.3.2) from its current group
    /// info (an `MlsMessage`) and ratchet tree: a device coming back after it was removed,
    /// its old leaf, if any, replaced. The group is kept at the new epoch at once (openmls
    /// merges an external commit as it makes it): when the delivery service refuses the commit,
    /// [`Device::forget`] the group and try again from the service's newer group info.
    pub fn join_externally(&self, group_info: &[u8], ratchet_tree: &[u8]) -> Result<Outgoing> {
        let info = match MlsMessageIn::tls_deserialize_exact(group_info).map_err(err("not an MLS message"))?.extract() {
            MlsMessageBodyIn::GroupInfo(info) => info,
            _ => return Err(Error::Malformed("not a group info".into())),
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(ratchet_tree).map_err(err("not a ratchet tree"))?;
        self.forget(info.group_id().as_slice())?;
        let (_, bundle) = MlsGroup::external_commit_builder()
            .with_ratchet_tree(tree)
            .with_config(Self::join_config())
            .build_group(&self.provider, info, self.credential())
            .map_err(err("cannot join"))?
            .load_psks(self.provider.storage())
            .map_err(err("cannot join"))?
            .create_group_info(true)
            .build(self.provider.rand(), self.provider.crypto(), &self.signer, |_| true)
            .map_err(err("cannot join"))?
            .finalize(&self.provider)
            .map_err(err("cannot join"))?;
        Self::bundled(bundle.into_messages())
    }

    /// Encrypts an application message for the group's current epoch.
    pub fn encrypt(&self, group_id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut group = self.group(group_id)?;
        let message = group.create_message(&self.provider, &self.signer, plaintext).map_err(err("cannot encrypt"))?;
        out(&message)
    }

    /// Processes what the group received (commit, proposal or application message), in the
    /// delivery service's order.
    pub fn receive(&self, group_id: &[u8], message: &[u8]) -> Result<Received> {
        let mut group = self.group(group_id)?;
        let message = MlsMessageIn::tls_deserialize_exact(message)
            .map_err(err("not an MLS message"))?
            .try_into_protocol_message()
            .map_err(err("not a group message"))?;
        let is_commit = message.content_type() == openmls::prelude::ContentType::Commit;
        if is_commit && message.epoch() < group.epoch() {
            // A commit already merged (this device's own, or caught up with).
            return Ok(Received::Ignored);
        }
        let processed = group.process_message(&self.provider, message).map_err(err("cannot process"))?;
        let sender = Identity::of_credential(processed.credential());
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(m) => {
                Ok(Received::Application { sender: sender?, plaintext: m.into_bytes() })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let removed_self = staged.self_removed();
                group.merge_staged_commit(&self.provider, *staged).map_err(err("cannot merge"))?;
                Ok(Received::Commit { epoch: group.epoch().as_u64(), removed_self })
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                group.store_pending_proposal(self.provider.storage(), *p).map_err(err("cannot keep"))?;
                Ok(Received::Proposal)
            }
            _ => Ok(Received::Ignored),
        }
    }

    /// The group's current epoch, if this device is in it.
    pub fn epoch(&self, group_id: &[u8]) -> Option<u64> {
        self.group(group_id).ok().map(|g| g.epoch().as_u64())
    }

    /// Whether proposals received (the server's removals) wait for a commit.
    pub fn has_pending_proposals(&self, group_id: &[u8]) -> bool {
        self.group(group_id).is_ok_and(|g| g.pending_proposals().next().is_some())
    }

    /// Forgets a group (after leaving its room): its secrets are deleted.
    pub fn forget(&self, group_id: &[u8]) -> Result<()> {
        match MlsGroup::load(self.provider.storage(), &GroupId::from_slice(group_id)) {
            Ok(Some(mut group)) => group.delete(self.provider.storage()).map_err(err("cannot delete")),
            _ => Ok(()),
        }
    }

    /// The devices of the group, as this device sees it.
    pub fn members(&self, group_id: &[u8]) -> Result<Vec<Identity>> {
        Ok(self.group(group_id)?.members().filter_map(|m| Identity::of_credential(&m.credential).ok()).collect())
    }

    /// Whether this device is (still) an active member of the group.
    pub fn is_active(&self, group_id: &[u8]) -> bool {
        self.group(group_id).is_ok_and(|g| g.is_active())
    }

    /// The ed25519 public key (the device's Matrix key, the leaf's signature key).
    pub fn signature_key(&self) -> &[u8] {
        self.signer.public()
    }
}

/// The external sender a server is in its groups: its MLS key and a credential naming it.
pub fn server_external_sender(server_name: &str, signature_key: &[u8]) -> ExternalSender {
    let credential = openmls::prelude::BasicCredential::new(server_name.as_bytes().to_vec()).into();
    ExternalSender::new(SignaturePublicKey::from(signature_key.to_vec()), credential)
}
