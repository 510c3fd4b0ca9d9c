"""The audit trail is append-only: on PostgreSQL a trigger refuses UPDATE and DELETE."""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION loans_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = 'loans_auditentry is append-only: ' || TG_OP || ' refused';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER loans_auditentry_append_only
    BEFORE UPDATE OR DELETE ON loans_auditentry
    FOR EACH ROW EXECUTE FUNCTION loans_audit_append_only();
"""
DROP = """
DROP TRIGGER IF EXISTS loans_auditentry_append_only ON loans_auditentry;
DROP FUNCTION IF EXISTS loans_audit_append_only();
"""


def _on_postgres(sql: str):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("loans", "0001_initial")]
    operations = [migrations.RunPython(_on_postgres(CREATE), _on_postgres(DROP))]
