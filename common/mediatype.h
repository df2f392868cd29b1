/** The media types of manifests and indexes (OCI image-spec, Docker manifest v2.2). Shared by
 * the proxy (Accept negotiation, Content-Type) and the cache (what a stored manifest is). */
#ifndef WINCH_COMMON_MEDIATYPE_H
#define WINCH_COMMON_MEDIATYPE_H

#define MT_DOCKER_V2 "application/vnd.docker.distribution.manifest.v2+json"
#define MT_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"
#define MT_DOCKER_V1 "application/vnd.docker.distribution.manifest.v1+json"
#define MT_DOCKER_V1_SIGNED "application/vnd.docker.distribution.manifest.v1+prettyjws"
#define MT_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MT_OCI_INDEX "application/vnd.oci.image.index.v1+json"

#endif
