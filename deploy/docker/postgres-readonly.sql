-- A role that can only read MLflow's tables, for a syncer that reads the database directly
-- (deploy/README.md, "Reading MLflow's database directly"). Run once by the postgres image at
-- its first start (/docker-entrypoint-initdb.d), before MLflow creates its tables: the default
-- privileges cover every table the `mlflow` role creates later, migrations included.
-- Set its password with: ALTER ROLE syncer_ro PASSWORD '...';
CREATE ROLE syncer_ro LOGIN;
GRANT CONNECT ON DATABASE mlflow TO syncer_ro;
GRANT USAGE ON SCHEMA public TO syncer_ro;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO syncer_ro;
ALTER DEFAULT PRIVILEGES FOR ROLE mlflow IN SCHEMA public GRANT SELECT ON TABLES TO syncer_ro;
ALTER ROLE syncer_ro SET default_transaction_read_only = on;
