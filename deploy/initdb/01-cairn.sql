-- Runs once, when the db service starts on an empty volume (docker-entrypoint-initdb.d runs it
-- with psql as the superuser). It creates the role the sync server connects as, that role's
-- database, and the pgvector extension in it.
--
-- The role is not a superuser and has no BYPASSRLS: either would skip the row-level security
-- that keeps each workspace's rows apart. It owns its database, so it can create and migrate
-- the server's tables. It cannot create extensions, so pgvector (the search index of hosted
-- workspaces) is created here, as the superuser.
-- Its password comes from the container's environment (CAIRN_DB_PASSWORD), never from this file.

\set ON_ERROR_STOP on
\getenv app_password CAIRN_DB_PASSWORD
\if :{?app_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'CAIRN_DB_PASSWORD is not set; see deploy/.env.example'; END $$;
\endif

CREATE ROLE cairn_app LOGIN PASSWORD :'app_password'
    NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
CREATE DATABASE cairn OWNER cairn_app;
REVOKE ALL ON DATABASE cairn FROM PUBLIC;

\connect cairn
CREATE EXTENSION IF NOT EXISTS vector;
