DROP FUNCTION IF EXISTS pgcc.fencing_epoch();
