//! `localml.v1.Trust`: join tokens, operator certificates and worker removal. Served on
//! the client port; the client port's key check puts it in the admin scope, except
//! `GetCa` (the CA's certificate is public).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use localml_proto::localml::v1::trust_server::Trust;
use localml_proto::localml::v1::*;
use tonic::{Request, Response, Status};

use crate::trust::{ClusterTrust, TrustStateError};
use crate::workers::Workers;

/// What an operator's trust call got wrong.
#[derive(Debug, thiserror::Error)]
pub enum TrustApiError {
    /// No token with that id.
    #[error("no join token with id '{0}'")]
    UnknownToken(String),
    /// A name that cannot be a certificate's.
    #[error(transparent)]
    Name(localml_trust::TrustError),
    /// The store or the CA failed.
    #[error(transparent)]
    State(#[from] TrustStateError),
}

impl From<TrustApiError> for Status {
    fn from(e: TrustApiError) -> Status {
        let message = e.to_string();
        match e {
            TrustApiError::UnknownToken(_) => Status::not_found(message),
            TrustApiError::Name(_) => Status::invalid_argument(message),
            TrustApiError::State(_) => Status::unavailable(message),
        }
    }
}

pub struct TrustService {
    pub trust: Arc<ClusterTrust>,
    pub workers: Arc<Workers>,
    pub store: Arc<dyn localml_store::Store>,
}

#[tonic::async_trait]
impl Trust for TrustService {
    async fn get_ca(&self, _: Request<GetCaRequest>) -> Result<Response<GetCaResponse>, Status> {
        Ok(Response::new(GetCaResponse {
            ca_pem: self.trust.ca.cert_pem().to_string(),
        }))
    }

    async fn create_token(
        &self,
        r: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let r = r.into_inner();
        let ttl = (r.ttl_seconds > 0).then(|| Duration::from_secs(r.ttl_seconds));
        let (token, info) = self
            .trust
            .create_token(ttl, &r.description)
            .await
            .map_err(TrustApiError::from)?;
        Ok(Response::new(CreateTokenResponse {
            token,
            info: Some(info),
        }))
    }

    async fn list_tokens(
        &self,
        _: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let tokens = self
            .trust
            .list_tokens()
            .await
            .map_err(TrustApiError::from)?;
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        r: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let id = r.into_inner().id;
        if !self
            .trust
            .revoke_token(&id)
            .await
            .map_err(TrustApiError::from)?
        {
            return Err(TrustApiError::UnknownToken(id).into());
        }
        Ok(Response::new(RevokeTokenResponse {}))
    }

    async fn issue_certificate(
        &self,
        r: Request<IssueCertificateRequest>,
    ) -> Result<Response<IssueCertificateResponse>, Status> {
        let name = r.into_inner().name;
        let issued = self
            .trust
            .ca
            .issue_operator(&name, SystemTime::now())
            .map_err(TrustApiError::Name)?;
        tracing::info!(name = %name, "operator certificate issued");
        Ok(Response::new(IssueCertificateResponse {
            certificate_pem: issued.cert_pem,
            private_key_pem: issued.key_pem,
            ca_pem: self.trust.ca.cert_pem().to_string(),
        }))
    }

    async fn remove_worker(
        &self,
        r: Request<RemoveWorkerRequest>,
    ) -> Result<Response<RemoveWorkerResponse>, Status> {
        let name = r.into_inner().name;
        localml_trust::ca::validate_name(&name).map_err(TrustApiError::Name)?;
        self.trust
            .revoke_worker(&name)
            .await
            .map_err(TrustApiError::from)?;
        self.workers.remove(&name);
        let key = format!(
            "{}{}",
            crate::workers::registrations::WORKERS,
            localml_store::escape_segment(&name)
        );
        self.store
            .delete(&key)
            .await
            .map_err(|e| TrustApiError::State(e.into()))?;
        tracing::info!(worker = %name, "worker removed");
        Ok(Response::new(RemoveWorkerResponse {}))
    }
}
