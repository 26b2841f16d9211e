"""The CloudFormation template: the lake bucket is private and encrypted, each role reaches only its own
prefixes and Glue databases, BI readers only the identifier-free marts, each identity has its own Athena results,
and the jobs it declares run the scripts `deploy` uploads, with Iceberg. The data outlives the stack."""

import pytest
import sqlglot
from sqlglot import exp

from synthea_pipeline.deploy import GLUE_VERSION
from synthea_pipeline.remote_jobs import PACKAGE_ZIP, entry_script, glue_conf_argument
from synthea_pipeline.transforms.bi import BI_VIEWS, SOURCE_DIALECT
from synthea_pipeline.transforms.catalog import Databases, catalog_views
from synthea_pipeline.transforms.iceberg import ICEBERG_DATABASE_SUFFIX
from synthea_pipeline.transforms.marts import MARTS
from synthea_pipeline_tests.cloudformation import (
    INFRA,
    actions,
    as_list,
    cfn_lint,
    comment_above,
    granted_targets,
    load_template,
    resources_of_type,
    statements,
)

pytestmark = pytest.mark.unit  # the template as data

TEMPLATE = INFRA / "synthea-pipeline.yaml"
STAGING, MARTS_DB, OMOP_DB = "${StagingDatabase}", "${MartsDatabase}", "${OmopDatabase}"
STAGING_ICEBERG, MARTS_ICEBERG = STAGING + ICEBERG_DATABASE_SUFFIX, MARTS_DB + ICEBERG_DATABASE_SUFFIX
OMOP_ICEBERG = OMOP_DB + ICEBERG_DATABASE_SUFFIX
ICEBERG_READS = ("glue:GetDatabase", "glue:GetTable", "glue:GetTables")
ICEBERG_WRITES = ("glue:CreateDatabase", "glue:CreateTable", "glue:UpdateTable")
"""What Iceberg's GlueCatalog calls to read a table, and to create and commit one."""
DQD_RESULTS = "reports/omop_dqd_results.json"
"""The one file under reports/ a job writes: the OMOP layer's DQD results, written after its commit."""
COMPUTE_LOGS = "dagster/compute-logs/*"
"""Where Dagster's S3ComputeLogManager keeps step logs (DAGSTER_COMPUTE_LOG_PREFIX in infra/dagster-ecs.yaml)."""
IDENTITIES = (
    "GlueStagingRole",
    "GlueMartsRole",
    "GlueOmopRole",
    "EmrJobRole",
    "OrchestratorPolicy",
    "BiReaderPolicy",
    "UploaderPolicy",
)


@pytest.fixture(scope="module")
def resources():
    return load_template(TEMPLATE)["Resources"]


def object_prefixes(resource: dict, wanted: set[str]) -> set[str]:
    """The lake prefixes on which the role or policy is allowed any of `wanted` actions."""
    return {
        target["Sub"].split("}/", 1)[1] if "Sub" in target else "(bucket)"
        for target in granted_targets(resource, wanted)
    }


def catalog_databases(resource: dict, action: str) -> set[str]:
    """The Glue databases on whose tables the role or policy is allowed `action`: those it names both as a
    database and by its tables (Glue checks both), and it must be allowed on the catalog too."""
    arns = {target["Sub"].split("${AWS::AccountId}:", 1)[1] for target in granted_targets(resource, {action})}
    databases = {arn.removeprefix("database/") for arn in arns if arn.startswith("database/")}
    tables = {arn.removeprefix("table/").removesuffix("/*") for arn in arns if arn.startswith("table/")}
    assert not arns or "catalog" in arns, (action, arns)
    assert databases == tables, (action, databases, tables)
    return databases


def test_bucket_is_private_encrypted_and_tls_only(resources):
    bucket = resources["LakeBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values()) and len(bucket["PublicAccessBlockConfiguration"]) == 4
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    [deny] = statements(resources["LakeBucketPolicy"])
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


ORCHESTRATED = {
    "source/*",
    "raw/*",
    "staging/*",
    "marts/*",
    "omop/*",
    "vocabulary/*",
    "reports/*",
    "_pipes/*",
    "athena-results/orchestrator/*",
    COMPUTE_LOGS,
}
BI_RESULTS = "athena-results/bi/*"


@pytest.mark.parametrize(
    "role, reads, writes, deletes",
    [
        (
            "GlueStagingRole",
            {"code/*", "source/*", "raw/*", "staging/*", "_pipes/*"},
            {"raw/*", "staging/*", "_pipes/*"},
            {"raw/*", "staging/*", "_pipes/*"},
        ),
        (
            "GlueMartsRole",
            {"code/*", "staging/*", "marts/*", "_pipes/*"},
            {"marts/*", "_pipes/*"},
            {"marts/*", "_pipes/*"},
        ),
        (
            "GlueOmopRole",
            {"code/*", "staging/*", "vocabulary/*", "omop/*", "_pipes/*"},
            {"omop/*", DQD_RESULTS, "_pipes/*"},
            {"omop/*", DQD_RESULTS, "_pipes/*"},
        ),
        (
            "EmrJobRole",
            {"code/*", "source/*", "raw/*", "staging/*", "marts/*", "vocabulary/*", "omop/*", "_pipes/*"},
            {"raw/*", "staging/*", "marts/*", "omop/*", DQD_RESULTS, "_pipes/*"},
            {"raw/*", "staging/*", "marts/*", "omop/*", DQD_RESULTS, "_pipes/*"},
        ),
        ("UploaderPolicy", {"source/*"}, {"source/*"}, {"source/*"}),
        ("BiReaderPolicy", {"marts/*", BI_RESULTS}, {BI_RESULTS}, set()),
        ("OrchestratorPolicy", ORCHESTRATED, ORCHESTRATED, ORCHESTRATED),
    ],
)
def test_each_role_reaches_only_its_own_prefixes(resources, role, reads, writes, deletes):
    """The quarantine is an Iceberg table under staging/: no role reaches a quarantine/ prefix any more. The
    orchestrator also keeps Dagster's step logs, under dagster/compute-logs/."""
    assert object_prefixes(resources[role], {"s3:GetObject"}) == reads
    assert object_prefixes(resources[role], {"s3:PutObject"}) == writes
    assert object_prefixes(resources[role], {"s3:DeleteObject"}) == deletes
    for statement in statements(resources[role]):
        assert "*" not in actions(statement) and "s3:*" not in actions(statement)
        if statement["Resource"] == "*":
            assert "Condition" in statement, statement


@pytest.mark.parametrize(
    "role, reads, writes",
    [
        ("GlueStagingRole", {STAGING_ICEBERG}, {STAGING_ICEBERG}),
        ("GlueMartsRole", {STAGING_ICEBERG, MARTS_ICEBERG}, {MARTS_ICEBERG}),
        ("GlueOmopRole", {STAGING_ICEBERG, OMOP_ICEBERG}, {OMOP_ICEBERG}),
        (
            "EmrJobRole",
            {STAGING_ICEBERG, MARTS_ICEBERG, OMOP_ICEBERG},
            {STAGING_ICEBERG, MARTS_ICEBERG, OMOP_ICEBERG},
        ),
        (
            "OrchestratorPolicy",
            {STAGING, MARTS_DB, OMOP_DB, STAGING_ICEBERG, MARTS_ICEBERG, OMOP_ICEBERG},
            {STAGING, MARTS_DB, OMOP_DB, STAGING_ICEBERG, MARTS_ICEBERG, OMOP_ICEBERG},
        ),
        ("BiReaderPolicy", {MARTS_DB, MARTS_ICEBERG}, set()),
        ("UploaderPolicy", set(), set()),
    ],
)
def test_each_role_commits_only_its_own_iceberg_tables(resources, role, reads, writes):
    """Iceberg's GlueCatalog reads and commits tables through the Glue Data Catalog: each job may change the
    tables of its own `_iceberg` database only (the marts job reads the staging one), the orchestrator also
    registers the views and expires snapshots, BI readers read the marts views and the tables under them. Nobody
    may drop a table or a database."""
    for action in ICEBERG_READS:
        assert catalog_databases(resources[role], action) == reads, action
    for action in ICEBERG_WRITES:
        assert catalog_databases(resources[role], action) == writes, action
    for statement in statements(resources[role]):
        assert not [a for a in actions(statement) if a.startswith("glue:Delete")], statement


def test_bi_readers_reach_no_identifying_layer(resources):
    """BI identities read the marts database's views (the marts and the BI views), the marts' Iceberg tables under
    them and their files, and nothing of staging/, raw/ or source/ (where SSNs, names and addresses are) nor the
    staging databases: not as objects, not by listing, not through the catalog. That suffices because every view
    of the marts database selects from the marts database or the marts' Iceberg tables only."""
    policy = resources["BiReaderPolicy"]
    granted = {
        target["Sub"]
        for statement in statements(policy)
        for target in as_list(statement["Resource"])
        if isinstance(target, dict) and "Sub" in target
    }
    for layer in ("staging/", "raw/", "source/", "reports/", "_pipes/", "code/"):
        assert not [arn for arn in granted if f"}}/{layer}" in arn], layer
    assert not [arn for arn in granted if STAGING in arn], granted
    [listing] = [s for s in statements(policy) if "s3:ListBucket" in actions(s)]
    assert actions(listing) == ["s3:ListBucket"]
    assert set(as_list(listing["Condition"]["StringLike"]["s3:prefix"])) == {"marts/*", BI_RESULTS}
    for action in ("glue:GetDatabase", "glue:GetTable", "glue:GetTables", "glue:GetPartitions"):
        assert catalog_databases(policy, action) == {MARTS_DB, MARTS_ICEBERG}, action

    databases = Databases()
    views = catalog_views(databases, {mart: ["build_id", "value"] for mart in MARTS}, includes_identifiers=False)
    marts_views = {view: sql for (database, view), sql in views.items() if database == databases.marts}
    assert set(BI_VIEWS) <= set(marts_views)
    for view, sql in marts_views.items():
        tree = sqlglot.parse_one(sql, read=SOURCE_DIALECT)
        ctes = {cte.alias for cte in tree.find_all(exp.CTE)}
        read = {table.db for table in tree.find_all(exp.Table) if table.name not in ctes}
        assert read <= {databases.marts, databases.marts_iceberg}, (view, read)


def workgroups(resources) -> dict[str, dict]:
    return resources_of_type(resources, "AWS::Athena::WorkGroup")


def test_each_identity_has_its_own_athena_results(resources):
    """Athena writes a query's results (the rows it read) where the workgroup says; each workgroup enforces its
    own result prefix, so no client's OutputLocation (SYNTHEA_ATHENA_OUTPUT) can move them. The orchestrator queries
    only in its workgroup and reaches only its results, BI readers likewise; nobody reaches athena-results/ as a
    whole."""
    outputs = {}
    for name, workgroup in workgroups(resources).items():
        configuration = workgroup["Properties"]["WorkGroupConfiguration"]
        assert configuration["EnforceWorkGroupConfiguration"] is True, name
        outputs[name] = (
            configuration["ResultConfiguration"]["OutputLocation"]["Sub"].removeprefix("s3://${LakeBucket}/") + "*"
        )
    assert outputs == {"AthenaWorkGroup": "athena-results/orchestrator/*", "BiAthenaWorkGroup": BI_RESULTS}
    for policy, workgroup in (("OrchestratorPolicy", "AthenaWorkGroup"), ("BiReaderPolicy", "BiAthenaWorkGroup")):
        queried = {
            target["Sub"].rsplit(":", 1)[1]
            for target in granted_targets(resources[policy], {"athena:StartQueryExecution"})
            if ":workgroup/" in target["Sub"]
        }
        assert queried == {"workgroup/${" + workgroup + "}"}, policy
        for action in ("s3:GetObject", "s3:PutObject"):
            results = {p for p in object_prefixes(resources[policy], {action}) if p.startswith("athena-results")}
            assert results == {outputs[workgroup]}, (policy, action)
    for identity in IDENTITIES:
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
            assert "athena-results/*" not in object_prefixes(resources[identity], {action}), identity


UNCONDITIONAL_LISTING = {
    "GlueStagingRole",
    "GlueMartsRole",
    "GlueOmopRole",
    "EmrJobRole",
    "OrchestratorPolicy",
    "UploaderPolicy",
}
"""Identities whose code takes a 404 for a missing key as "absent" (Spark's probes, the upload manifest): S3 answers
403 instead unless the caller may list the bucket, so their ListBucket stays unconditional, as the template says."""


def test_every_listing_is_limited_by_prefix_or_documented(resources):
    """ListBucket limited by an s3:prefix condition to prefixes the identity may read (a condition on a statement
    with other bucket actions would deny those), or unconditional for an allow-listed identity whose template
    comment says why."""
    unconditional = set()
    for identity in IDENTITIES:
        readable = object_prefixes(resources[identity], {"s3:GetObject"})
        for statement in statements(resources[identity]):
            if "s3:ListBucket" not in actions(statement):
                continue
            if "Condition" not in statement:
                unconditional.add(identity)
                continue
            assert actions(statement) == ["s3:ListBucket"], statement
            prefixes = as_list(statement["Condition"]["StringLike"]["s3:prefix"])
            assert set(prefixes) <= readable, (identity, prefixes)
    assert unconditional == UNCONDITIONAL_LISTING
    for identity in UNCONDITIONAL_LISTING:
        comment = comment_above(TEMPLATE, identity)
        assert "ListBucket stays unconditional" in comment and "404" in comment, (identity, comment)


def test_incomplete_multipart_uploads_are_aborted(resources):
    """A lifecycle rule over the whole bucket removes the parts of uploads nobody finished, and every identity
    that writes may abort its own multipart uploads, on every prefix it writes."""
    rules = resources["LakeBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    [abort] = [rule for rule in rules if "AbortIncompleteMultipartUpload" in rule]
    assert abort["Status"] == "Enabled" and "Prefix" not in abort and "Filter" not in abort
    assert 1 <= abort["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] <= 7
    writers = [
        name
        for name, resource in resources.items()
        if resource["Type"] in ("AWS::IAM::Role", "AWS::IAM::ManagedPolicy")
        and object_prefixes(resource, {"s3:PutObject"})
    ]
    assert set(writers) == set(IDENTITIES)
    for writer in writers:
        assert object_prefixes(resources[writer], {"s3:AbortMultipartUpload"}) == object_prefixes(
            resources[writer], {"s3:PutObject"}
        ), writer


def test_the_data_outlives_the_stack(resources):
    """Deleting the stack, or a change that replaces the resource, leaves the lake bucket and the Glue databases."""
    kept = ["LakeBucket", *resources_of_type(resources, "AWS::Glue::Database")]
    assert len(kept) == 7  # the bucket, and a view and an Iceberg database per layer (staging, marts, omop)
    for name in kept:
        assert resources[name].get("DeletionPolicy") == "Retain", name
        assert resources[name].get("UpdateReplacePolicy") == "Retain", name


def test_iceberg_tables_and_athena_views_have_their_own_databases(resources):
    """The Iceberg tables are in the `_iceberg` databases, where `transforms.iceberg` names them, at the layers'
    prefixes; the plain databases hold the Athena views over them."""
    databases = {}
    for resource in resources_of_type(resources, "AWS::Glue::Database").values():
        database = resource["Properties"]["DatabaseInput"]
        databases[database["Name"].get("Sub") or "${" + database["Name"]["Ref"] + "}"] = database
    assert set(databases) == {STAGING, MARTS_DB, OMOP_DB, STAGING_ICEBERG, MARTS_ICEBERG, OMOP_ICEBERG}
    assert databases[STAGING_ICEBERG]["LocationUri"] == {"Sub": "s3://${LakeBucket}/staging/"}
    assert databases[MARTS_ICEBERG]["LocationUri"] == {"Sub": "s3://${LakeBucket}/marts/"}
    assert databases[OMOP_ICEBERG]["LocationUri"] == {"Sub": "s3://${LakeBucket}/omop/"}
    assert "Iceberg tables" in databases[STAGING_ICEBERG]["Description"]["Sub"]
    assert "Athena views" in databases[MARTS_DB]["Description"]["Sub"]


@pytest.mark.parametrize(
    "job, layer", [("GlueStagingJob", "staging"), ("GlueMartsJob", "marts"), ("GlueOmopJob", "omop")]
)
def test_glue_jobs_run_the_deployed_scripts(resources, job, layer):
    properties = resources[job]["Properties"]
    assert properties["GlueVersion"] == GLUE_VERSION
    assert properties["Command"]["ScriptLocation"]["Sub"].endswith(f"/code/{entry_script(layer)}")
    assert properties["DefaultArguments"]["--extra-py-files"]["Sub"].endswith(f"/code/{PACKAGE_ZIP}")
    assert properties["Role"] == {"GetAtt": f"Glue{layer.capitalize()}Role.Arn"}


@pytest.mark.parametrize("job", ["GlueStagingJob", "GlueMartsJob", "GlueOmopJob"])
def test_glue_jobs_open_the_iceberg_catalog_deploy_configures(resources, job):
    """The stack's jobs get the same Iceberg settings as the jobs `deploy` creates, warehouse in the lake bucket."""
    arguments = resources[job]["Properties"]["DefaultArguments"]
    assert arguments["--datalake-formats"] == "iceberg"
    assert arguments["--conf"] == {"Sub": glue_conf_argument("${LakeBucket}")}


def test_template_passes_cfn_lint():
    result = cfn_lint(TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr
