DROP TABLE IF EXISTS pgcc.leases;
