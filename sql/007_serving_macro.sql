-- `recommendations_for(user_id)` belongs to the serving database readers open (serving.duckdb); it
-- is defined once, in rec_pipeline/core/model/serving.py. Warehouses made before this drop their copy.

DROP MACRO TABLE IF EXISTS recommendations_for;
