"""The top-level values of Gatekeeper's Helm chart, which validate checks a document's against."""

from __future__ import annotations

# charts/gatekeeper/values.yaml of github.com/open-policy-agent/gatekeeper at tag v3.15.1
# (commit 3350319f76d3e2d78df0b972c63258cba7c7915f), in its order; the file itself is
# tests/fixtures/gatekeeper/values-v3.15.1.yaml, which a test reads these back from.
CHART_SOURCE = "charts/gatekeeper/values.yaml of open-policy-agent/gatekeeper v3.15.1"
TOP_LEVEL_VALUES = (
    "replicas",
    "revisionHistoryLimit",
    "auditInterval",
    "metricsBackends",
    "auditMatchKindOnly",
    "constraintViolationsLimit",
    "auditFromCache",
    "disableMutation",
    "disableValidatingWebhook",
    "validatingWebhookName",
    "validatingWebhookTimeoutSeconds",
    "validatingWebhookFailurePolicy",
    "validatingWebhookAnnotations",
    "validatingWebhookExemptNamespacesLabels",
    "validatingWebhookObjectSelector",
    "validatingWebhookCheckIgnoreFailurePolicy",
    "validatingWebhookCustomRules",
    "validatingWebhookURL",
    "enableDeleteOperations",
    "enableExternalData",
    "enableGeneratorResourceExpansion",
    "enableTLSHealthcheck",
    "maxServingThreads",
    "mutatingWebhookName",
    "mutatingWebhookFailurePolicy",
    "mutatingWebhookReinvocationPolicy",
    "mutatingWebhookAnnotations",
    "mutatingWebhookExemptNamespacesLabels",
    "mutatingWebhookObjectSelector",
    "mutatingWebhookTimeoutSeconds",
    "mutatingWebhookCustomRules",
    "mutatingWebhookURL",
    "mutationAnnotations",
    "auditChunkSize",
    "logLevel",
    "logDenies",
    "logMutations",
    "emitAdmissionEvents",
    "emitAuditEvents",
    "admissionEventsInvolvedNamespace",
    "auditEventsInvolvedNamespace",
    "resourceQuota",
    "externaldataProviderResponseCacheTTL",
    "image",
    "preInstall",
    "postUpgrade",
    "postInstall",
    "preUninstall",
    "podAnnotations",
    "auditPodAnnotations",
    "podLabels",
    "podCountLimit",
    "secretAnnotations",
    "enableRuntimeDefaultSeccompProfile",
    "controllerManager",
    "audit",
    "crds",
    "pdb",
    "service",
    "disabledBuiltins",
    "psp",
    "upgradeCRDs",
    "rbac",
    "externalCertInjection",
)

# The Config's spec (config.gatekeeper.sh/v1alpha1) as its CRD defines it:
# charts/gatekeeper/crds/config-customresourcedefinition.yaml at v3.15.1, its openAPIV3Schema
# reduced to types and field names (tests/fixtures/gatekeeper/config-crd-v3.15.1.yaml).
_STR = {"type": "string"}
_GVK = {"type": "object", "properties": {"group": _STR, "kind": _STR, "version": _STR}}
CONFIG_SPEC_SCHEMA = {
    "type": "object",
    "properties": {
        "match": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "excludedNamespaces": {"type": "array", "items": _STR},
                    "processes": {"type": "array", "items": _STR},
                },
            },
        },
        "readiness": {"type": "object", "properties": {"statsEnabled": {"type": "boolean"}}},
        "sync": {
            "type": "object",
            "properties": {"syncOnly": {"type": "array", "items": _GVK}},
        },
        "validation": {
            "type": "object",
            "properties": {
                "traces": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"dump": _STR, "kind": _GVK, "user": _STR},
                    },
                }
            },
        },
    },
}

# A ConstraintTemplate's spec (templates.gatekeeper.sh/v1) as its CRD defines it:
# charts/gatekeeper/crds/constrainttemplate-customresourcedefinition.yaml at v3.15.1, reduced
# to types and field names (tests/fixtures/gatekeeper/constrainttemplate-crd-v3.15.1.yaml);
# the open parts (the parameters' schema, a code entry's source) are not checked further.
TEMPLATE_SPEC_SCHEMA = {
    "type": "object",
    "properties": {
        "crd": {
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {
                        "names": {
                            "type": "object",
                            "properties": {
                                "kind": _STR,
                                "shortNames": {"type": "array", "items": _STR},
                            },
                        },
                        "validation": {
                            "type": "object",
                            "properties": {
                                "legacySchema": {"type": "boolean"},
                                "openAPIV3Schema": {"type": "object"},
                            },
                        },
                    },
                }
            },
        },
        "targets": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "code": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"engine": _STR, "source": {}},
                        },
                    },
                    "libs": {"type": "array", "items": _STR},
                    "rego": _STR,
                    "target": _STR,
                },
            },
        },
    },
}
# The one target Gatekeeper's templates name (pkg/target/target.go).
ADMISSION_TARGET = "admission.k8s.gatekeeper.sh"
# The kinds Gatekeeper 3.15.1's chart has CRDs for (charts/gatekeeper/crds/); none is named
# Gatekeeper, so `kubectl get gatekeeper` finds nothing.
KINDS = (
    "Assign",
    "AssignImage",
    "AssignMetadata",
    "Config",
    "ConstraintPodStatus",
    "ConstraintTemplate",
    "ConstraintTemplatePodStatus",
    "ExpansionTemplate",
    "ExpansionTemplatePodStatus",
    "ModifySet",
    "MutatorPodStatus",
    "Provider",
    "SyncSet",
)
